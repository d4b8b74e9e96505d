"""Reading and writing weights files: state dicts from .pth/.pt/.safetensors without running pickled code
(``read_state_dict``), our self-describing .safetensors files (``save_model``: arch, config, class names
and preprocessing as metadata, so one file rebuilds the model), the state-dict digest and the training
checkpoints' content digest (``checkpoint_digest``, checked wherever a checkpoint is read).

Files that are not PyTorch weights (Keras HDF5 and .keras archives, ONNX graphs, TorchScript and
torch.export archives, text) are recognised by their bytes (``sniff``) and refused with what to do."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..models.builder import ARCHS
from ..runtime.files import atomic_path
from .errors import WeightsError
from .preprocess import Preprocess

log = logging.getLogger(__name__)

FORMAT = "inceptionv3/1"     # the "format" metadata value of the .safetensors files save_model writes
# Metadata values that are JSON structures (safetensors metadata is str -> str).
_JSON_FIELDS = ("model_config", "num_classes", "class_names", "preprocess", "extra", "metrics")
# Wrapper keys of training checkpoints, in order of preference: the live weights before an EMA copy.
_EMA_KEYS = ("ema", "model_ema", "state_dict_ema")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", *_EMA_KEYS)
_PREFIXES = ("module.", "_orig_mod.")   # DataParallel/DDP and torch.compile wrappers
# Training checkpoints (training.state) carry a "format" starting so, and a "digest" of their contents.
CHECKPOINT_FORMAT_PREFIX = "inceptionv3.train-checkpoint/"
# Bounds on what metadata may ask for: a damaged or hostile file must not make the loader allocate
# gigabytes (a 10^9-class head) before the key check can refuse it. ImageNet-21k has 21,841 classes.
MAX_CLASSES = 100_000
MAX_IN_CHANS = 16


@dataclass
class ModelMeta:
    """What a loaded model's weights say about how to use it (``model.meta``)."""
    arch: str
    num_classes: int
    model_config: dict
    preprocess: Preprocess
    class_names: list[str] | None
    source: str                 # registry name or file path
    sha256: str | None


def state_dict_digest(model: nn.Module) -> str:
    """sha256 of a model's state dict (names and values, sorted by name): the identity of weights held in
    memory, for caches and saved results that must not be mixed across weights."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(key.encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())   # numpy has no bf16
    return h.hexdigest()


def checkpoint_digest(state: Mapping[str, Any]) -> str:
    """sha256 over every tensor's bytes and every other value's repr, in order (the 'digest' key aside):
    the content digest a training checkpoint carries, which catches flipped bytes torch.load does not."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(o, dict):
            for k, v in o.items():
                if k != "digest":
                    h.update(repr(k).encode())
                    walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(state)
    return h.hexdigest()


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(path: Path) -> str:
    """What a file is, by its bytes: "safetensors", "torch" (torch.save, zip or legacy pickle), "hdf5",
    "keras" (a Keras 3 .keras archive), "torchscript", "pt2" (torch.export), "onnx", "text" or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(4096)
    size = path.stat().st_size
    # safetensors: a little-endian u64 header length, then the JSON header.
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"   # a damaged zip: torch.load says what is wrong with it
        if "model.weights.h5" in names or "config.json" in names and "metadata.json" in names:
            return "keras"
        if any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return "torchscript"
        if any(n.endswith("/archive_format") or n.split("/", 1)[-1].startswith("models/") for n in names):
            return "pt2"
        return "torch"
    if head[:1] == b"\x80":   # a pickle (torch.save's legacy format)
        return "torch"
    # ONNX: a ModelProto, whose first field is ir_version (tag 0x08, a small varint), then producer_name,
    # opset_import or graph.
    if len(head) > 2 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A,
                                                                           0x42):
        return "onnx"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError:
            pass
    return "unknown"


def _not_weights(path: Path, kind: str) -> WeightsError:
    convert = f"inceptionv3 convert --from keras {path} --out model.safetensors"
    exported = ("pass the weights file it was exported from (.safetensors or .pt) instead: 'inceptionv3 "
                "export' makes exports from weights, and an export cannot be turned back into them")
    what = {
        "hdf5": f"a Keras (HDF5) weights file, not a PyTorch one: convert it once with '{convert}' and use "
                f"model.safetensors",
        "keras": f"a Keras 3 .keras archive, not PyTorch weights: convert it once with '{convert}' and use "
                 f"model.safetensors",
        "onnx": f"an ONNX graph (an exported model), not a weights file: run it with ONNX Runtime, or "
                f"{exported}",
        "torchscript": f"a TorchScript archive (an exported model holding code, which is not run here), not "
                       f"a weights file: {exported}",
        "pt2": f"a torch.export program (an exported model), not a weights file: {exported}",
    }
    if kind == "text":
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline(80).strip()
        return WeightsError(f"{path}: a text file, not weights (it starts {first!r}); a failed download "
                            f"saves an error page like this: fetch the file again")
    return WeightsError(f"{path}: {what[kind]}")


def _decode_meta(meta: Mapping[str, Any], path: Path) -> dict:
    out = {}
    for key, value in meta.items():
        if key in _JSON_FIELDS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise WeightsError(f"{path}: metadata field {key!r} is not valid JSON: {value[:80]!r}; "
                                   f"the file is damaged, save it again") from None
        out[key] = value
    _check_meta(out, path)
    return out


def _count(value: Any, what: str, low: int, high: int, path: Path) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise WeightsError(f"{path}: metadata {what} must be an integer from {low} to {high}, got {shown}; "
                           f"the file is damaged, save it again")


def _check_meta(meta: dict, path: Path) -> None:
    """Refuse metadata of the wrong type or beyond the bounds before anything is built from it."""
    def bad(field: str, want: str) -> WeightsError:
        return WeightsError(f"{path}: metadata {field!r} must be {want}, got {type(meta[field]).__name__}; "
                            f"the file is damaged, save it again")

    if meta.get("arch") is not None and meta["arch"] not in ARCHS:
        raise WeightsError(f"{path}: metadata 'arch' is {str(meta['arch'])[:40]!r}; known: {', '.join(ARCHS)}")
    config = meta.get("model_config")
    if config is not None:
        if not isinstance(config, dict):
            raise bad("model_config", "a JSON object")
        if "num_classes" in config:
            _count(config["num_classes"], "model_config.num_classes", 1, MAX_CLASSES, path)
        if "in_chans" in config:
            _count(config["in_chans"], "model_config.in_chans", 1, MAX_IN_CHANS, path)
    if meta.get("num_classes") is not None:
        _count(meta["num_classes"], "'num_classes'", 1, MAX_CLASSES, path)
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) <= MAX_CLASSES
                                  and all(isinstance(n, str) for n in names)):
        raise bad("class_names", f"a list of at most {MAX_CLASSES} strings")
    if meta.get("preprocess") is not None:
        try:
            Preprocess.from_dict(meta["preprocess"])
        except (ValueError, TypeError) as e:
            raise WeightsError(f"{path}: unusable 'preprocess' metadata: {e}") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}   # noqa: SIM118 (a file handle, not a dict)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for truncated / foreign files
        raise WeightsError(f"{path}: not a readable .safetensors file ({e}); it may be truncated") from None
    return sd, _decode_meta(meta, path)


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weightsunpickler" in str(e).lower():
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            what = f" ({found.group(1)})" if found else ""
            raise WeightsError(
                f"{path}: it pickles Python objects{what}, not just tensors, and unpickling those is "
                f"arbitrary code execution, so it was refused. Ask its source for a file of tensors only "
                f"(.safetensors, or a state dict saved with torch.save(model.state_dict(), ...))."
            ) from None
        raise WeightsError(f"{path}: not a PyTorch weights file ({e})") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, OSError, KeyError ...
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no detail'}); it may be truncated "
                           f"or not a weights file") from None
    meta = {}
    checkpoint = isinstance(obj, Mapping) and str(obj.get("format", "")).startswith(CHECKPOINT_FORMAT_PREFIX)
    if checkpoint and "digest" in obj and checkpoint_digest(obj) != obj["digest"]:
        raise WeightsError(f"{path}: checkpoint contents do not match their digest (damaged file); use "
                           f"the weights the run kept (checkpoints/step-*.safetensors) or its best.safetensors")
    if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping):
        meta = _decode_meta(obj["meta"], path)   # our training checkpoints: {"model": sd, "meta": {...}}
    return _unwrap(obj, path), meta


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path, depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself, or under a common wrapper key."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and depth < 3:
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                if key not in _EMA_KEYS and any(isinstance(obj.get(k), Mapping) for k in _EMA_KEYS):
                    log.info("%s also holds EMA weights; loading %r", path, key)
                return _unwrap(obj[key], path, depth + 1)
    if isinstance(obj, Mapping):
        keys = list(obj)[:8]
        raise WeightsError(f"{path}: no state dict found (top-level keys: {keys}); expected a dict of "
                           f"tensors or one under {list(_WRAPPER_KEYS[:3])}")
    raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def _strip_prefixes(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        while new.startswith(_PREFIXES):
            new = new.split(".", 1)[1]
        if new in out:
            raise WeightsError(f"{path}: keys {key!r} and another both become {new!r} after removing "
                               f"wrapper prefixes {list(_PREFIXES)}")
        out[new] = value
    return out


def check_finite(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or Inf (a diverged run), naming the file and the first such tensors."""
    # A float64 sum is NaN or Inf exactly when a value is (float32 and narrower values cannot overflow it),
    # and it reads each tensor once without allocating a mask of its size.
    bad = [k for k, v in sd.items()
           if v.is_floating_point() and not bool(torch.isfinite(v.sum(dtype=torch.float64)))]
    if bad:
        raise WeightsError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf, first: {bad[:5]}; "
                           f"the weights are broken (diverged training?)")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a .pth/.pt or .safetensors file, without running pickled code.

    Strips 'module.' / '_orig_mod.' prefixes, unwraps training checkpoints ({"model": sd, "meta": ...},
    "state_dict", "model_state_dict", "ema") and refuses NaN/Inf weights. Metadata is {} for bare state
    dicts. Raises WeightsError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty")
    kind = sniff(path)
    if kind == "safetensors" or kind == "unknown" and path.suffix == ".safetensors":
        sd, meta = _read_safetensors(path)
    elif kind in ("torch", "unknown"):
        sd, meta = _read_torch(path)
    else:
        raise _not_weights(path, kind)
    if not sd:
        raise WeightsError(f"{path}: holds no tensors")
    sd = _strip_prefixes(sd, path)
    check_finite(sd, path)
    return sd, meta


def _contiguous_unshared(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous views and tensors sharing storage (tied weights): copy those.
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in sd.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        elif t.numel():
            seen.add(ptr)
        out[key] = t
    return out


def save_model(model: nn.Module, path: str | os.PathLike, class_names: list[str] | None = None,
               preprocess: Preprocess | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` as one self-describing .safetensors file, atomically.

    Metadata: format, arch, model_config, num_classes, class_names, preprocess and ``extra`` (JSON values),
    enough for ``load_model(path)`` to rebuild the same model. Class names and preprocessing default to
    ``model.meta``'s when it has them.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: save_model writes .safetensors files; use that suffix")
    config = dict(getattr(model, "config", {}))
    num_classes = int(getattr(model, "num_classes", config.get("num_classes", 0)))
    meta: ModelMeta | None = getattr(model, "meta", None)
    if class_names is None and meta is not None and meta.class_names and len(meta.class_names) == num_classes:
        class_names = meta.class_names
    if preprocess is None and meta is not None:
        preprocess = meta.preprocess
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-class model")
    fields: dict[str, Any] = {
        "format": FORMAT,
        "arch": getattr(model, "arch", "inception_v3"),
        "model_config": config,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "extra": extra or {},
    }
    metadata = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items() if v is not None}
    tensors = _contiguous_unshared(model.state_dict())

    data = safetensors_bytes(tensors, metadata=metadata)
    with atomic_path(path) as tmp:   # temp file beside path, fsync, os.replace; the mode follows the umask
        tmp.write_bytes(data)
    return path
