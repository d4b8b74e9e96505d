"""Generator metrics over folders, statistics files, tensors and iterators of batches.

The network is the FID graph (weights entry ``fid``: 1008 classes, padding-excluded average pools,
max-pool in Mixed_7c), read at one of four taps (64, 192, 768 or 2048 dims). What differs between the
reference tools is the preprocessing, so it is a named mode, recorded in every statistics file:

* ``pytorch-fid``: pixels / 255, ``F.interpolate`` bilinear to 299 (align_corners=False, no antialias),
  then 2x - 1 (pytorch-fid);
* ``tf``: pixels in 0..255, TF1 ``resize_bilinear`` to 299 (align_corners=False, no half-pixel centres),
  then (x - 128) / 128 (TTUR, torch-fidelity);
* ``clean``: pixels in 0..255, PIL bicubic resize of each channel as a float image, clipped to 0..255,
  then (x - 128) / 128 (clean-fid's "clean" mode).

Files are decoded and preprocessed image by image in worker processes (so mixed sizes, grayscale, RGBA
and 16-bit files all work); the network runs in inference mode, channels-last, with batch norm folded
into the convolutions. Statistics accumulate in float64 in O(dims^2) memory and merge across processes.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .. import __version__
from ..engine.fuse import fold_batch_norm
from ..runtime.threads import resolve_device
from .modes import DIMS
from .preprocess import check_mode, prepare

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]




# The TF "2015-12-05" graph as pytorch-fid ports it, from the same model code through its parameters.
FID_NET_CONFIG = {"aux_logits": False, "count_include_pad": False, "last_pool": "max"}


def load_metric_model(weights: str | PathLike | nn.Module = "fid") -> nn.Module:
    """The metric network: a registry name (default ``fid``), a weights file, or a model as is.

    A bare 1008-class state dict without an aux head (pytorch-fid's and torch-fidelity's files) is
    built as the FID graph; files with our metadata or a registry hash build what they say.
    """
    from ..models.inception import InceptionV3
    from ..weights.errors import WeightsError
    from ..weights.hub import sha256_file
    from ..weights.io import ModelMeta, read_state_dict
    from ..weights.load import load_model
    from ..weights.registry import get_entry

    if isinstance(weights, nn.Module):
        return weights.eval()
    if isinstance(weights, str) and not Path(weights).is_file():
        return load_model(weights)        # a registry name (load_model explains unknown names)
    sd, meta = read_state_dict(weights)
    fc = sd.get("fc.weight")
    if not (meta.get("arch") is None and fc is not None and fc.shape[0] == 1008
            and not any(k.startswith("AuxLogits.") for k in sd)):
        return load_model(weights)
    # Built here from the one read (reading a 95 MB file twice costs seconds on a busy machine).
    log.debug("%s: a bare 1008-class state dict; building the FID graph %s", weights, FID_NET_CONFIG)
    model = InceptionV3(num_classes=1008, init_weights=False, **FID_NET_CONFIG)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:   # missing / unexpected / mis-shaped keys, listed by torch
        raise WeightsError(f"{weights}: not an FID-graph state dict ({' '.join(str(e).split())[:400]})"
                           ) from None
    entry = get_entry("fid")
    model.meta = ModelMeta(arch="inception_v3", num_classes=1008, model_config=dict(model.config),
                           preprocess=entry.preprocess, class_names=None, source=str(weights),
                           sha256=sha256_file(weights))
    return model.eval()


class FeatureNet:
    """The metric network and one preprocessing mode: images in, N x dims features (and logits) out.

    ``logits`` are the FID net's 1008 logits without the fc bias (pool @ W.T), the Inception Score's
    input as in the original code and torch-fidelity.
    """

    def __init__(self, weights: str | PathLike | nn.Module = "fid", mode: str = "pytorch-fid",
                 dims: int = 2048, device: str = "auto", fold_bn: bool = True) -> None:
        check_mode(mode)
        if dims not in DIMS:
            raise ValueError(f"dims must be one of {sorted(DIMS)} (pytorch-fid's taps), got {dims}")
        self.mode, self.dims, self.tap = mode, dims, DIMS[dims]
        self.device = resolve_device(device)
        model = load_metric_model(weights)
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{type(model).__name__} has no feature taps (forward_intermediates)")
        from ..weights.io import state_dict_digest

        meta = getattr(model, "meta", None)
        self.weights_source = str(getattr(meta, "source", None) or type(model).__name__)
        self.weights_sha256 = getattr(meta, "sha256", None) or "state_dict:" + state_dict_digest(model)
        self.num_classes = int(getattr(model, "num_classes", 0))
        if isinstance(weights, nn.Module):
            model = copy.deepcopy(model)       # the caller's model stays as it was
        model = fold_batch_norm(model.eval()) if fold_bn else model.eval()
        self.model = model.to(self.device, memory_format=torch.channels_last)

    def meta(self) -> dict:
        """What statistics made with this net record about it."""
        return {"weights": self.weights_source, "weights_sha256": self.weights_sha256, "tap": self.tap,
                "dims": self.dims, "mode": self.mode, "dtype": "float32", "version": __version__}

    @torch.inference_mode()
    def forward_prepared(self, x: torch.Tensor, logits: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N x dims float32 features, N x classes unbiased logits or None) of prepared 299 px inputs."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        tap = "pool" if logits else self.tap
        out = self.model.forward_intermediates(x, [tap, self.tap] if tap != self.tap else [tap])
        feats = out[self.tap]
        if feats.dim() == 4:
            feats = feats.mean(dim=(2, 3))   # spatial taps: global average, as pytorch-fid
        if feats.shape[1] != self.dims:
            raise ValueError(f"the network's {self.tap} tap has {feats.shape[1]} channels, not {self.dims}")
        lg = out["pool"] @ self.model.fc.weight.T if logits else None
        return feats.float(), (lg.float() if lg is not None else None)

    def __call__(self, images: torch.Tensor, logits: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of raw images (uint8 0..255 or float [0, 1], N x 3 x H x W), preprocessed in the mode."""
        return self.forward_prepared(prepare(images.to(self.device), self.mode), logits)
