"""Reading and writing weights files: state dicts from .pth/.pt/.safetensors without running pickled code
(``read_state_dict``), our self-describing .safetensors files (``save_model``: arch, config, class names
and preprocessing as metadata, so one file rebuilds the model), and the state-dict digest."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

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


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # A safetensors file starts with a little-endian u64 header length, then the JSON header.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _decode_meta(meta: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in meta.items():
        if key in _JSON_FIELDS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise WeightsError(f"metadata field {key!r} is not valid JSON: {value[:80]!r}") from None
        out[key] = value
    return out


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}   # noqa: SIM118 (a file handle, not a dict)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for truncated / foreign files
        raise WeightsError(f"{path}: not a readable .safetensors file ({e}); it may be truncated") from None
    return sd, _decode_meta(meta)


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weightsunpickler" in str(e).lower():
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            what = f" ({found.group(1)})" if found else ""
            raise WeightsError(
                f"{path}: loading this file needs arbitrary code execution: it pickles Python objects{what}, "
                f"not just tensors, so it was refused. If you trust its source, convert it once in your own "
                f"code: sd = torch.load(path, weights_only=False), take the state dict (sd['model'] or "
                f"module.state_dict()), then torch.save(sd, 'weights.pt') or "
                f"safetensors.torch.save_file(sd, 'weights.safetensors')."
            ) from None
        raise WeightsError(f"{path}: not a PyTorch weights file ({e})") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, OSError, KeyError ...
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no detail'}); it may be truncated "
                           f"or not a weights file") from None
    meta = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping):
        meta = _decode_meta(obj["meta"])   # our training checkpoints: {"model": sd, "meta": {...}, ...}
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
    sd, meta = _read_safetensors(path) if _is_safetensors(path) else _read_torch(path)
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

    with atomic_path(path) as tmp:   # temp file beside path, fsync, os.replace
        save_file(tensors, str(tmp), metadata=metadata)
    return path
