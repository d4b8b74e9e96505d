"""Feature extraction: one N x D float32 matrix per folder of images, for transfer learning and metrics."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from . import distributed as dist_mod
from . import inference
from .distributed import SINGLE_PROCESS
from .fileio import atomic_path, write_text_atomic
from .model import TAPS
from .runtime import resolve_device
from .transforms import expand_paths
from .weights import load_model

FEATURE_FORMATS = (".npy", ".npz", ".safetensors")


@dataclass
class Features:
    features: np.ndarray                 # N x D float32, row i belongs to paths[i]
    paths: list[str]                     # the images that succeeded, in input order
    layer: str
    failures: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)


def extract_features(
    inputs: Sequence[str | os.PathLike],
    weights: str | os.PathLike | nn.Module = "imagenet",
    layer: str = "pool",
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    arch: str | None = None,
    distributed: bool | None = None,
    precision: str = "fp32",
    backend: str = "auto",
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | torch.Tensor | None = None,
) -> Features:
    """Features of every usable image at ``layer`` (a name from ``model.TAPS``); failures are listed.

    Under torchrun (``distributed`` None means: when torchrun started this process) each rank takes a
    contiguous shard of the inputs; rank 0 returns the merged result, in input order and equal to a
    single-process run, and the other ranks return their own shard.

    The network runs as ``accel.build_engine`` builds it (batch norm folded, sibling convs fused) at
    ``precision`` on ``backend``; fp32 (the default) matches the plain model to float rounding, which
    metrics such as FID need. int8 calibrates on ``calibration`` (images like the inputs).
    """
    if layer not in TAPS:
        raise ValueError(f"unknown --layer {layer!r}; choose one of: {', '.join(TAPS)}")
    paths = expand_paths(inputs)
    if distributed is None:
        distributed = dist_mod.env_from_environ().distributed
    dev = resolve_device(device)
    env = dist_mod.setup(dev) if distributed else SINGLE_PROCESS
    dev = dist_mod.local_device(dev, env)
    model = weights if isinstance(weights, nn.Module) else load_model(weights, **({"arch": arch} if arch else {}))
    mine = [paths[i] for i in dist_mod.shard_range(len(paths), env)]
    rows: list[tuple[int, np.ndarray]] = []
    failures: list[tuple[int, str]] = []
    if calibration is not None and not isinstance(calibration, torch.Tensor):
        spec = [calibration] if isinstance(calibration, (str, os.PathLike)) else list(calibration)
        calibration = inference.calibration_images(model, spec, workers=workers)
    for step in inference.run(model, mine, layer, batch_size, workers, str(dev), progress and env.is_main,
                              desc="features", precision=precision, backend=backend, calibration=calibration):
        failures += step.failures
        rows += zip(step.indices, step.outputs.numpy())
    rows.sort(key=lambda r: r[0])
    dim = {"logits": model.num_classes, "pool": model.num_features}.get(layer, TAPS[layer].channels)
    feats = np.stack([r[1] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    result = Features(feats, [str(mine[i]) for i, _ in rows], layer,
                      [(str(mine[i]), why) for i, why in sorted(failures)])
    parts = dist_mod.gather_to_main(result, env) if env.distributed else None
    if parts is not None:   # rank 0: the shards in rank order are the inputs in order
        result = Features(np.concatenate([p.features for p in parts]), [q for p in parts for q in p.paths],
                          layer, [f for p in parts for f in p.failures])
    return result


def save_features(result: Features, out: str | os.PathLike) -> Path:
    """Write ``.npy`` (plus ``.paths.txt`` beside it), ``.npz`` or ``.safetensors``; atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FEATURE_FORMATS:
        raise ValueError(f"--out {out}: unknown format {suffix!r}; use one of {', '.join(FEATURE_FORMATS)}")
    with atomic_path(out) as tmp:
        if suffix == ".npy":
            np.save(tmp, result.features)
        elif suffix == ".npz":
            np.savez(tmp, features=result.features, paths=np.array(result.paths, dtype=str),
                     failed_paths=np.array([p for p, _ in result.failures], dtype=str),
                     failed_reasons=np.array([r for _, r in result.failures], dtype=str),
                     layer=np.array(result.layer))
        else:
            from safetensors.numpy import save_file
            save_file({"features": np.ascontiguousarray(result.features)}, str(tmp), metadata={
                "paths": json.dumps(result.paths), "layer": result.layer,
                "failures": json.dumps(result.failures)})
    if suffix == ".npy":
        write_text_atomic(out.with_suffix(".paths.txt"), "".join(p + "\n" for p in result.paths))
    return out

