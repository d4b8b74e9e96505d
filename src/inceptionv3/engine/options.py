"""How the engine runs: the choices (precisions, backends, formats) and ``EngineOptions``, one value that
carries them from the command line to the tasks.

Nothing here imports torch: the command line builds its flags from these names, so ``--help`` is instant.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime", "openvino")
MIN_CALIBRATION_IMAGES = 32    # fewer leaves activation ranges to chance (one odd image sets a whole scale)
CALIBRATION_LIMIT = 256        # images read from --calibration at most
AUTO_EXPORT_MIN_IMAGES = 256   # backend "auto" exports to OpenVINO/ONNX Runtime from this many images on

# Which (backend, precision) pairs exist; the pip command that brings each backend.
SUPPORTED = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
PACKAGES = {"onnxruntime": ("onnxruntime", "pip install 'inceptionv3[export]'"),   # (runtime, install)
            "openvino": ("openvino", "pip install 'inceptionv3[openvino]'")}

# Outputs every backend computes; the other taps run on the torch backend only.
EXPORTED_OUTPUTS = ("logits", "pool")

# What `inceptionv3 export` writes: ONNX (ONNX Runtime, OpenVINO, TensorRT), TorchScript, torch.export.
EXPORT_FORMATS = ("onnx", "torchscript", "pt2")

# What --device takes; checked here, torch-free, so a typo fails before torch loads or a model is read.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"

PathLike = Union[str, "os.PathLike[str]"]
Calibration = Union[PathLike, Sequence[PathLike], "torch.Tensor", None]


@dataclass(frozen=True)
class EngineOptions:
    """Where and how the network runs, for every task that runs it (predict, features, evaluate, metrics).

    ``device``: auto, cpu, cuda or cuda:N. ``precision`` / ``backend``: see ``PRECISIONS`` / ``BACKENDS``,
    or "auto". ``batch_size`` images per forward pass; ``workers`` decode processes (None: chosen for the
    core count; 0 decodes in-process); ``threads`` torch compute threads (None: the cores the workers
    leave free, or ``INCEPTIONV3_NUM_THREADS``). ``calibration``: images for int8 (files, folders, or a
    preprocessed N x C x H x W tensor). ``progress``: draw a progress bar.
    """
    device: str = "auto"
    precision: str = "fp32"
    backend: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    calibration: Calibration = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, str):     # a torch.device
            object.__setattr__(self, "device", str(self.device))
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"--device {self.device}: unknown device; use {DEVICE_HELP}")
        if isinstance(self.calibration, (str, os.PathLike)):
            object.__setattr__(self, "calibration", (self.calibration,))
        elif isinstance(self.calibration, list):
            object.__setattr__(self, "calibration", tuple(self.calibration))
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"unknown precision {self.precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
        if self.backend not in ("auto", *BACKENDS):
            raise ValueError(f"unknown backend {self.backend!r}; choose one of auto, {', '.join(BACKENDS)}")
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--workers", self.workers, 0),
                                 ("--threads", self.threads, 1)):
            if value is None and flag != "--batch-size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")


FIELDS = tuple(f.name for f in dataclasses.fields(EngineOptions))


def engine_options(options: EngineOptions | None = None, /, **settings: Any) -> EngineOptions:
    """``options`` (default: ``EngineOptions()``) with every setting passed as a keyword and not None.

    The one place where the tasks' keyword arguments (``predict(paths, batch_size=8, precision="bf16")``)
    meet ``options=``: a keyword given explicitly wins over the options value.
    """
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown engine setting(s) {', '.join(unknown)}; EngineOptions has {', '.join(FIELDS)}")
    base = options if options is not None else EngineOptions()
    given = {k: v for k, v in settings.items() if v is not None}
    return dataclasses.replace(base, **given) if given else base
