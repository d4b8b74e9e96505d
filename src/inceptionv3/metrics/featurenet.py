"""The metric network: the FID graph read at one tap, run by the inference engine, in one preprocessing mode.

The network is the FID graph (``models.builder.FID_GRAPH``, weights entry ``fid``: 1008 classes,
padding-excluded average pools, max-pool in Mixed_7c), read at one of four taps (64, 192, 768 or 2048
dims, ``modes.DIMS``). It runs as ``engine.build_engine`` builds it (batch norm folded, sibling 1x1 convs
fused) in fp32 on the torch backend unless the options say otherwise, so its features equal the plain
network's to float rounding.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..engine.engine import build_engine
from ..engine.options import EngineOptions, PathLike, engine_options
from ..engine.resolve import resolve_backend
from ..models.builder import FID_GRAPH, build_model
from ..weights.hub import sha256_file
from ..weights.io import ModelMeta, read_state_dict, state_dict_digest
from ..weights.load import apply_state_dict, load_model
from ..weights.registry import get_entry
from .modes import DIMS, METRIC_OPTIONS
from .preprocess import check_mode, prepare

log = logging.getLogger(__name__)

# FID_GRAPH's variant arguments (all but num_classes), under the name the metrics have always exported.
FID_NET_CONFIG = {k: v for k, v in FID_GRAPH.items() if k != "num_classes"}

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}


def load_metric_model(weights: str | PathLike | nn.Module = "fid") -> nn.Module:
    """The metric network: a registry name (default ``fid``), a weights file, or a model as is.

    A bare 1008-class state dict without an aux head (pytorch-fid's and torch-fidelity's files) is
    built as the FID graph; files with our metadata or a registry hash build what they say.
    """
    if isinstance(weights, nn.Module):
        return weights.eval()
    if isinstance(weights, str) and not Path(weights).is_file():
        return load_model(weights)        # a registry name (load_model explains unknown names)
    sd, meta = read_state_dict(weights)
    fc = sd.get("fc.weight")
    if not (meta.get("arch") is None and fc is not None and fc.shape[0] == FID_GRAPH["num_classes"]
            and not any(k.startswith("AuxLogits.") for k in sd)):
        return load_model(weights)
    # Built here from the one read: the file is large, and load_model would read it again.
    log.debug("%s: a bare %d-class state dict; building the FID graph", weights, fc.shape[0])
    model = build_model("inception_v3", init_weights=False, **FID_GRAPH)
    apply_state_dict(model, sd, str(weights), strict=True)
    model.meta = ModelMeta(arch=model.arch, num_classes=model.num_classes, model_config=dict(model.config),
                           preprocess=get_entry("fid").preprocess, class_names=None, source=str(weights),
                           sha256=sha256_file(weights))
    return model.eval()


class FeatureNet:
    """The metric network and one preprocessing mode: images in, N x dims features (and logits) out.

    ``logits`` are the FID net's 1008 logits without the fc bias (pool @ W.T), the Inception Score's
    input as in the original code and torch-fidelity. ``options`` (default ``METRIC_OPTIONS``) say how
    the engine runs; ``device`` replaces their device. Outputs come back as float32 CPU tensors.
    """

    def __init__(self, weights: str | PathLike | nn.Module = "fid", mode: str = "pytorch-fid",
                 dims: int = 2048, device: str | None = None, *, options: EngineOptions | None = None) -> None:
        check_mode(mode)
        if dims not in DIMS:
            raise ValueError(f"dims must be one of {sorted(DIMS)} (pytorch-fid's taps), got {dims}")
        self.mode, self.dims, self.tap = mode, dims, DIMS[dims]
        self.options = engine_options(options or METRIC_OPTIONS, device=device)
        model = load_metric_model(weights)
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{type(model).__name__} has no feature taps (forward_intermediates)")
        meta = getattr(model, "meta", None)
        self.weights_source = str(getattr(meta, "source", None) or type(model).__name__)
        self.weights_sha256 = getattr(meta, "sha256", None) or "state_dict:" + state_dict_digest(model)
        self.num_classes = int(getattr(model, "num_classes", 0))
        self._source = model    # build_engine works on a copy: the caller's model stays as it was
        self._fc_weight = model.fc.weight.detach().to("cpu", torch.float32)
        self._planned = 0
        self._build(images=None)

    def _build(self, images: int | None) -> None:
        self.engine = build_engine(self._source, self.tap, self.options, images=images)
        self.device = self.engine.device
        self.model = self.engine.module
        # Logits need the pooled features: the tap's engine gives them for 2048 dims; other taps read
        # them from a second engine, built when logits are first asked for.
        self._pool_engine = self.engine if self.tap == "pool" else None

    def plan(self, images: int) -> None:
        """Fit the engine to a job of ``images`` images (the largest job planned counts): with backend
        "auto", a large job runs on the exported graph (OpenVINO / ONNX Runtime, fp32: features within
        about 1e-6 of torch's) when that pays for its one-time export; a small one stays on torch."""
        self._planned = max(self._planned, images)
        wanted = resolve_backend(self.options.backend, self.engine.precision, self.device, self.tap,
                                 self._planned)
        if wanted != self.engine.backend:
            self._build(self._planned)

    def meta(self) -> dict:
        """What statistics made with this net record about it."""
        return {"weights": self.weights_source, "weights_sha256": self.weights_sha256, "tap": self.tap,
                "dims": self.dims, "mode": self.mode, "dtype": _DTYPES[self.engine.precision],
                "version": __version__}

    def forward_prepared(self, x: torch.Tensor, logits: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N x dims float32 features, N x classes unbiased logits or None) of prepared 299 px inputs."""
        feats = self.engine(x)
        if feats.shape[1] != self.dims:
            raise ValueError(f"the network's {self.tap} tap has {feats.shape[1]} channels, not {self.dims}")
        if not logits:
            return feats, None
        if self._pool_engine is None:
            self._pool_engine = build_engine(self._source, "pool", self.options)
        pool = feats if self._pool_engine is self.engine else self._pool_engine(x)
        return feats, pool @ self._fc_weight.T

    def __call__(self, images: torch.Tensor, logits: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of raw images (uint8 0..255 or float [0, 1], N x 3 x H x W), preprocessed in the mode."""
        return self.forward_prepared(prepare(images.to(self.device), self.mode), logits)
