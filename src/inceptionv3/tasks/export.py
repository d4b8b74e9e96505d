"""Export a model for other runtimes: ONNX (onnxruntime, OpenVINO, TensorRT), TorchScript and torch.export.

Every exported file computes ``forward(x) -> logits`` for an N x C x S x S float input already
preprocessed (resized, cropped, normalised) as the weights expect; the batch axis is dynamic and S is
fixed at export time (default: the weights' input size). What the caller needs to feed the model right
travels inside the file: arch, model config, preprocessing and class names (ONNX ``metadata_props``,
TorchScript / torch.export ``extra_files`` as ``meta.json``). ``check_export`` reruns the file in its
own runtime and returns the largest difference from the PyTorch model.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine.backends import ort_session
from ..engine.onnx import MAX_BATCH, OPSET, export_onnx
from ..engine.options import EXPORT_FORMATS as FORMATS
from ..runtime.files import atomic_path
from ..weights.io import FORMAT

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "META_FILE", "OPSET", "TOLERANCE", "ExportResult", "check_export", "export_metadata",
           "export_model", "load_exported_metadata", "run_exported"]

TOLERANCE = 1e-4     # max abs difference from our PyTorch logits that --check accepts
META_FILE = "meta.json"


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[int, int, int, int]   # example shape; axis 0 (batch) is dynamic
    max_abs_diff: float | None = None     # set by check_export


def export_metadata(model: nn.Module) -> dict[str, str]:
    """String -> string metadata for an exported file: what a runtime needs to feed the model right."""
    meta = getattr(model, "meta", None)
    fields = {
        "format": FORMAT,
        "exported_with": f"torch {torch.__version__}",
        "arch": getattr(model, "arch", "inception_v3"),
        "model_config": dict(getattr(model, "config", {})),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "input": "float32 N x C x H x W, preprocessed as 'preprocess' says (resize, center crop, "
                 "scale to [0, 1], (x - mean) / std); output: N x num_classes logits",
        "preprocess": meta.preprocess.to_dict() if meta is not None else None,
        "class_names": meta.class_names if meta is not None else None,
        "source": meta.source if meta is not None else None,
        "sha256": meta.sha256 if meta is not None else None,
    }
    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items() if v is not None}


def _example(model: nn.Module, input_size: int | None, batch: int = 2) -> torch.Tensor:
    meta = getattr(model, "meta", None)
    size = input_size or (meta.preprocess.input_size if meta is not None else 299)
    in_chans = int(getattr(model, "in_chans", 3))
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, in_chans, size, size, generator=g)


def export_model(model: nn.Module, out: str | os.PathLike, format: str = "onnx",
                 input_size: int | None = None, check: bool = False) -> ExportResult:
    """Write ``model`` (in eval mode, on CPU) as ``format`` to ``out``, atomically.

    ``input_size`` fixes the spatial side (default: the weights' preprocess input size); the batch axis
    stays dynamic. ``check=True`` reloads the file, runs it on a fresh batch of another size and raises
    ValueError if it differs from the PyTorch model by more than ``TOLERANCE``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    model = model.cpu().eval()
    x = _example(model, input_size)
    metadata = export_metadata(model)
    with torch.no_grad(), atomic_path(out) as tmp:
        if format == "onnx":
            export_onnx(model, x, tmp, output_name="logits", metadata=metadata)
        elif format == "torchscript":
            scripted = torch.jit.script(model)
            torch.jit.save(scripted, str(tmp), _extra_files={META_FILE: json.dumps(metadata)})
        else:
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
            torch.export.save(program, str(tmp), extra_files={META_FILE: json.dumps(metadata)})
    result = ExportResult(out, format, tuple(x.shape))
    log.info("exported %s to %s (input %s, batch dynamic)", format, out, "x".join(map(str, x.shape)))
    if check:
        result.max_abs_diff = check_export(out, model, format, input_size=x.shape[-1])
    return result


def load_exported_metadata(path: str | os.PathLike, format: str) -> dict:
    """The metadata an exported file carries, JSON values decoded."""
    raw: dict[str, str]
    if format == "onnx":
        import onnx
        proto = onnx.load(str(path), load_external_data=False)
        raw = {p.key: p.value for p in proto.metadata_props}
    else:
        files = {META_FILE: ""}
        if format == "torchscript":
            torch.jit.load(str(path), _extra_files=files)
        else:
            torch.export.load(str(path), extra_files=files)
        raw = json.loads(files[META_FILE])
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_exported(path: str | os.PathLike, format: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of an exported file on ``x``, computed by the file's own runtime (onnxruntime for ONNX)."""
    if format == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            raise ImportError("checking an ONNX file needs onnxruntime: pip install 'inceptionv3[export]'")
        return torch.from_numpy(ort_session(Path(path))(x.numpy()))
    if format == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return module(x)


def check_export(path: str | os.PathLike, model: nn.Module, format: str,
                 input_size: int, batch: int = 3) -> float:
    """Max abs difference between the exported file and ``model`` on a random batch (a batch size other
    than the export example's, which also proves the batch axis is dynamic); ValueError over TOLERANCE."""
    x = _example(model, input_size, batch=batch)
    with torch.no_grad():
        want = model.cpu().eval()(x)
    got = run_exported(path, format, x)
    if got.shape != want.shape:
        raise ValueError(f"{path}: exported model gives shape {tuple(got.shape)}, "
                         f"PyTorch {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    if not diff <= TOLERANCE:
        raise ValueError(f"{path}: exported model differs from PyTorch by {diff:.3g} (> {TOLERANCE:g})")
    log.info("%s matches PyTorch: max abs diff %.3g on a batch of %d", path, diff, batch)
    return diff
