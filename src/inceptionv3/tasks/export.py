"""Export a model for other runtimes: ONNX (onnxruntime, OpenVINO, TensorRT), TorchScript and torch.export.

Every exported file computes ``forward(x) -> logits`` for an N x C x S x S float input already
preprocessed (resized, cropped, normalised) as the weights expect; the batch axis is dynamic and S is
fixed at export time (default: the weights' input size), at least the network's minimum. What the caller needs to feed the model right
travels inside the file: arch, model config, preprocessing and class names (ONNX ``metadata_props``,
TorchScript / torch.export ``extra_files`` as ``meta.json``). ``check_export`` reruns the file in its
own runtime on smooth, photo-like images and returns the largest difference from the PyTorch model;
``export_model`` runs it on the temporary file, so a file that fails its check never takes the real name.
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
from ..models.builder import min_input_size
from ..models.mini import MINI_MIN_INPUT_SIZE
from ..runtime.files import atomic_path
from ..weights.io import FORMAT
from ..weights.preprocess import MAX_SIDE

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "META_FILE", "OPSET", "SUFFIXES", "TOLERANCE", "ExportResult", "check_export",
           "check_target", "export_metadata", "export_model", "load_exported_metadata", "run_exported"]

# What --check accepts: the largest difference from our PyTorch logits, relative to their scale (the
# largest |logit|, at least 1). A trained model's logits reach tens, and float32 rounding in another
# runtime's fused kernels grows with them, so an absolute bound fails good files.
TOLERANCE = 1e-4
META_FILE = "meta.json"
# The file name endings each format is written under: another runtime picks its loader by them.
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts"), "pt2": (".pt2",)}


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


def check_target(out: str | os.PathLike, format: str, input_size: int | None,
                 min_size: int = MINI_MIN_INPUT_SIZE, network: str = "the smallest network") -> None:
    """Refuse, before any work, an unknown format, an output name another runtime would not recognise,
    and an input side below ``min_size`` (the network's smallest; by default the smallest of any arch)
    or above ``MAX_SIDE``: ValueError naming the fix."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIXES[format]:
        raise ValueError(f"{out}: a {format} file is named with {' or '.join(SUFFIXES[format])}, not "
                         f"{suffix or 'no extension'}; change --out")
    if input_size is not None and not min_size <= input_size <= MAX_SIDE:
        raise ValueError(f"--input-size {input_size}: {network} needs a side of {min_size} to "
                         f"{MAX_SIDE} pixels; pass one in that range or leave it out for the weights' own")


def _size(model: nn.Module, input_size: int | None) -> int:
    meta = getattr(model, "meta", None)
    return input_size or (meta.preprocess.input_size if meta is not None else 299)


def _example(model: nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    in_chans = int(getattr(model, "in_chans", 3))
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, in_chans, size, size, generator=g)


def photo_like(model: nn.Module, size: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """``batch`` smooth, photo-like images (colour gradients, soft blobs, a few hard edges), normalised
    with the weights' mean/std: inputs in the range real images give, where uniform noise drives a
    trained network's activations far outside it."""
    g = torch.Generator().manual_seed(seed)
    in_chans = int(getattr(model, "in_chans", 3))
    axis = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    images = []
    for _ in range(batch):
        r = torch.rand(12, in_chans, generator=g)
        img = r[0, :, None, None] + (r[1, :, None, None] - 0.5) * xx + (r[2, :, None, None] - 0.5) * yy
        for k in range(3, 9, 3):   # two soft blobs
            cy, cx, width = torch.rand(3, generator=g)
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.1 * width))
            img = img + (r[k, :, None, None] - 0.5) * blob
        edge = (xx > r[9, 0]) & (yy < r[10, 0])   # a rectangle's corner: a hard edge, as objects have
        img = img + (r[11, :, None, None] - 0.5) * edge
        images.append(img.clamp(0, 1))
    x = torch.stack(images)
    meta = getattr(model, "meta", None)
    mean = meta.preprocess.mean if meta is not None else (0.5, 0.5, 0.5)
    std = meta.preprocess.std if meta is not None else (0.5, 0.5, 0.5)
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)
    if in_chans == 1:
        mean_t, std_t = mean_t.mean(0, keepdim=True), std_t.mean(0, keepdim=True)
    return (x - mean_t[:, None, None]) / std_t[:, None, None]


def export_model(model: nn.Module, out: str | os.PathLike, format: str = "onnx",
                 input_size: int | None = None, check: bool = False) -> ExportResult:
    """Write ``model`` (in eval mode, on CPU) as ``format`` to ``out``, atomically.

    ``input_size`` fixes the spatial side (default: the weights' preprocess input size); the batch axis
    stays dynamic. ``check=True`` reloads the written file, runs it on a batch of another size and raises
    ValueError if it differs from the PyTorch model by more than ``TOLERANCE`` of the logits' scale; the
    file then never replaces ``out``.
    """
    out = Path(out)
    model = model.cpu().eval()
    check_target(out, format, input_size, min_input_size(model), getattr(model, "arch", "this network"))
    x = _example(model, _size(model, input_size))
    metadata = export_metadata(model)
    diff = None
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
        if check:   # on the temporary file: a failure leaves nothing under out
            diff = check_export(tmp, model, format, input_size=x.shape[-1], label=out)
    log.info("exported %s to %s (input %s, batch dynamic)", format, out, "x".join(map(str, x.shape)))
    return ExportResult(out, format, tuple(x.shape), diff)


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
                 input_size: int, batch: int = 3, label: str | os.PathLike | None = None) -> float:
    """Max abs difference between the exported file and ``model`` on ``photo_like`` images (a batch size
    other than the export example's, which also proves the batch axis is dynamic); ValueError when it
    exceeds ``TOLERANCE`` times the logits' scale. ``label`` names the file in messages."""
    label = label or path
    x = photo_like(model, input_size, batch=batch)
    with torch.no_grad():
        want = model.cpu().eval()(x)
    got = run_exported(path, format, x)
    if got.shape != want.shape:
        raise ValueError(f"{label}: exported model gives shape {tuple(got.shape)}, "
                         f"PyTorch {tuple(want.shape)}; the file was not written")
    diff = float((got - want).abs().max())
    scale = max(1.0, float(want.abs().max()))
    if not diff <= TOLERANCE * scale:
        raise ValueError(f"{label}: exported model differs from PyTorch by {diff:.3g} on photo-like inputs "
                         f"(more than {TOLERANCE:g} of the logits' scale {scale:.3g}); the file was not "
                         f"written. Try another --format, or report the network and runtime versions")
    log.info("%s matches PyTorch: max abs diff %.3g (logits' scale %.3g) on a batch of %d", label, diff,
             scale, batch)
    return diff
