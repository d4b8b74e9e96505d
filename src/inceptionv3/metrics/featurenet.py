"""The metric network: the FID graph read at one tap, run by the inference engine, in one preprocessing mode.

The network is the FID graph (``models.builder.FID_GRAPH``, weights entry ``fid``: 1008 classes,
padding-excluded average pools, max-pool in Mixed_7c), read at one of four taps (64, 192, 768 or 2048
dims, ``modes.DIMS``). It runs as ``engine.build_engine`` builds it (batch norm folded, sibling 1x1 convs
fused) in fp32 on the torch backend unless the options say otherwise, so its features equal the plain
network's to float rounding.

sFID's spatial features (``dims=SFID_DIMS``) are read at ``Mixed_6d.branch1x1`` (the TF graph's
``mixed_6/conv``, ``modes.SFID_TAP``) by the BN-folded torch graph, which stops there.

Every batch's features are checked: NaN or Inf is an error naming the weights, and values beyond
``HUGE_FEATURE`` are warned about once (broken batch-norm statistics give features near 1e9 and a FID
of 1e23 that looks like a result).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..engine.engine import Engine, build_engine
from ..engine.fuse import fuse_for_inference
from ..engine.options import EngineOptions, PathLike, engine_options
from ..engine.resolve import resolve_backend
from ..models.builder import FID_GRAPH, build_model
from ..runtime.threads import resolve_device
from ..weights.hub import sha256_file
from ..weights.io import ModelMeta, read_state_dict, state_dict_digest
from ..weights.load import apply_state_dict, load_model
from ..weights.registry import get_entry
from .functional import MetricWarning
from .modes import DIMS, METRIC_OPTIONS, SFID_CHANNELS, SFID_DIMS, SFID_MODULE, SFID_TAP
from .preprocess import check_mode, prepare

log = logging.getLogger(__name__)

# FID_GRAPH's variant arguments (all but num_classes), under the name the metrics have always exported.
FID_NET_CONFIG = {k: v for k, v in FID_GRAPH.items() if k != "num_classes"}

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}

# The FID graph's features stay within tens (ReLU outputs of batch-normalised convs, averaged); values
# past this mean the weights are broken, whatever the images.
HUGE_FEATURE = 1e4


class _Reached(Exception):
    """Raised by the sFID hook to stop the forward pass once the spatial tap has its output."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


class SpatialEngine:
    """sFID's features: the first 7 channels of ``Mixed_6d.branch1x1`` (17 x 17, after its ReLU),
    flattened in TF's height, width, channel order as ADM flattens them (N x 2023 float32 on the CPU).

    Runs the BN-folded graph in fp32 on torch (the fused engine merges branch1x1 into a wider conv, so
    the tap is not a module there) and stops the pass at the tap.
    """

    backend, precision, output = "torch", "fp32", SFID_TAP

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        try:
            tap = model.get_submodule(SFID_MODULE)
        except AttributeError:
            raise ValueError(f"sFID reads the FID graph's {SFID_MODULE}; {type(model).__name__} has none (use "
                             f"the 'fid' weights)") from None
        del tap
        self.module = fuse_for_inference(model, siblings=False, pool_after_conv=False).to(device)
        self.module.get_submodule(SFID_MODULE).register_forward_hook(self._stop)

    @staticmethod
    def _stop(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        raise _Reached(output)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode():
                self.module.forward_features(x)
        except _Reached as reached:
            out = reached.output
        else:
            raise RuntimeError(f"the network never ran {SFID_MODULE}")
        if out.shape[1:] != (192, 17, 17):
            raise ValueError(f"{SFID_MODULE} gave {tuple(out.shape[1:])}, not 192 x 17 x 17: sFID needs "
                             f"299 px inputs to the FID graph")
        return out[:, :SFID_CHANNELS].permute(0, 2, 3, 1).reshape(out.shape[0], -1).float().cpu()

    def describe(self) -> str:
        return f"FID graph {SFID_TAP} ({SFID_MODULE}[:{SFID_CHANNELS}]) | torch fp32 on {self.device} | BN folded"


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
    ``dims=SFID_DIMS`` (2023) gives sFID's spatial features instead (see ``SpatialEngine``).
    """

    def __init__(self, weights: str | PathLike | nn.Module = "fid", mode: str = "pytorch-fid",
                 dims: int = 2048, device: str | None = None, *, options: EngineOptions | None = None) -> None:
        check_mode(mode)
        if dims not in DIMS and dims != SFID_DIMS:
            raise ValueError(f"dims must be one of {sorted(DIMS)} (pytorch-fid's taps) or {SFID_DIMS} "
                             f"(sFID's), got {dims}")
        self.mode, self.dims, self.tap = mode, dims, DIMS.get(dims, SFID_TAP)
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
        self._warned_huge = False
        self.device = resolve_device(self.options.device)
        self._engine: Engine | SpatialEngine | None = None
        self._pool_engine: Engine | None = None

    @property
    def engine(self) -> Engine | SpatialEngine:
        """The engine, built on first use for the largest job planned by then (``plan``): built before the
        job's size is known, a large job would build a second one."""
        if self._engine is None:
            self._build(self._planned or None)
        return self._engine

    @property
    def model(self) -> nn.Module:
        return self.engine.module

    def _build(self, images: int | None) -> None:
        if self.tap == SFID_TAP:
            self._engine = SpatialEngine(self._source, self.device)
            log.info("engine: %s", self._engine.describe())
        else:
            self._engine = build_engine(self._source, self.tap, self.options, images=images)
        self.device = self._engine.device
        # Logits need the pooled features: the tap's engine gives them for 2048 dims; other taps read
        # them from a second engine, built when logits are first asked for.
        self._pool_engine = self._engine if self.tap == "pool" else None

    def plan(self, images: int) -> None:
        """Fit the engine to a job of ``images`` images (the largest job planned counts): with backend
        "auto", a large job runs on the exported graph (OpenVINO / ONNX Runtime, fp32: features within
        about 1e-6 of torch's) when that pays for its one-time export; a small one stays on torch."""
        self._planned = max(self._planned, images)
        if self.tap == SFID_TAP or self._engine is None:     # not built yet: built for this size on first use
            return
        wanted = resolve_backend(self.options.backend, self.engine.precision, self.device, self.tap,
                                 self._planned)
        if wanted != self.engine.backend:
            self._build(self._planned)

    def meta(self) -> dict:
        """What statistics made with this net record about it."""
        return {"tool": "inceptionv3", "weights": self.weights_source, "weights_sha256": self.weights_sha256,
                "tap": self.tap, "dims": self.dims, "mode": self.mode, "dtype": _DTYPES[self.engine.precision],
                "version": __version__}

    def _check(self, feats: torch.Tensor) -> None:
        """NaN/Inf features are an error, absurdly large ones a warning (once): both mean broken weights."""
        if not bool(torch.isfinite(feats).all()):
            raise ValueError(f"{self.weights_source}: the network's {self.tap} features hold NaN or Inf; the "
                             f"weights are broken (e.g. bad batch-norm statistics): use the 'fid' weights "
                             f"or re-convert the file")
        peak = float(feats.abs().max()) if feats.numel() else 0.0
        if peak > HUGE_FEATURE and not self._warned_huge:
            self._warned_huge = True
            warnings.warn(f"{self.weights_source}: the network's {self.tap} features reach {peak:.3g} (the FID "
                          f"graph's stay within tens): the weights look broken (e.g. bad batch-norm "
                          f"statistics), so the metrics are meaningless", MetricWarning, stacklevel=2)

    def forward_prepared(self, x: torch.Tensor, logits: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N x dims float32 features, N x classes unbiased logits or None) of prepared 299 px inputs."""
        feats = self.engine(x)
        if feats.shape[1] != self.dims:
            raise ValueError(f"the network's {self.tap} tap has {feats.shape[1]} channels, not {self.dims}")
        self._check(feats)
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
