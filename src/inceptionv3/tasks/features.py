"""Feature extraction: one N x D float32 matrix per folder of images, for transfer learning and metrics.

``extract_features`` runs the engine over the images (sharded under torchrun) and keeps finished rows in a
resume folder as it goes; ``save_features`` writes the result as .npy, .npz or .safetensors.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from torch import nn

from ..data.paths import expand_paths
from ..engine import runner
from ..engine.options import Calibration, EngineOptions, engine_options
from ..models.taps import TAPS
from ..runtime import distributed as dist_mod
from ..runtime.files import atomic_path, write_text_atomic
from ..runtime.threads import resolve_device
from ..weights.io import state_dict_digest
from ..weights.load import load_model
from .formats import FEATURE_FORMATS

log = logging.getLogger(__name__)

# Finished rows go to the resume folder at least every FLUSH_ROWS images or FLUSH_SECONDS, whichever
# comes first: a crash loses at most that much work.
FLUSH_ROWS = 1024
FLUSH_SECONDS = 60.0


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
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    arch: str | None = None,
    distributed: bool | None = None,
    precision: str | None = None,
    backend: str | None = None,
    calibration: Calibration = None,
    resume: str | os.PathLike | None = None,
    restart: bool = False,
    *,
    options: EngineOptions | None = None,
) -> Features:
    """Features of every usable image at ``layer`` (a name from ``model.TAPS``); failures are listed.

    Under torchrun (``distributed`` None means: when torchrun started this process) each rank takes a
    contiguous shard of the inputs; rank 0 returns the merged result, in input order and equal to a
    single-process run, and the other ranks return their own shard.

    ``options`` say how the engine runs (the keywords of the same names replace single settings); fp32
    (the default) matches the plain model to float rounding, which metrics such as FID need.

    ``resume``: a folder that keeps finished rows as they come (every ``FLUSH_ROWS`` images or
    ``FLUSH_SECONDS``, and when the run is interrupted); called again with the same folder, inputs,
    weights, layer and precision, only the missing images are computed. A folder from another job is
    an error; ``restart`` discards the folder's rows first. Remove the folder once the result is saved
    (``discard_partial``; the command does).
    """
    if layer not in TAPS:
        raise ValueError(f"unknown --layer {layer!r}; choose one of: {', '.join(TAPS)}")
    options = engine_options(options, batch_size=batch_size, workers=workers, device=device, progress=progress,
                             precision=precision, backend=backend, calibration=calibration)
    paths = expand_paths(inputs)
    env, dev = dist_mod.start(resolve_device(options.device), distributed)
    options = engine_options(options, device=str(dev), progress=options.progress and env.is_main)
    model = weights if isinstance(weights, nn.Module) else load_model(weights, **({"arch": arch} if arch else {}))
    if resume is not None and restart:
        if env.is_main:
            discard_partial(resume)
        dist_mod.barrier(env)
    saved = _Saved(Path(resume), _job(model, paths, layer, options.precision), env.rank) \
        if resume is not None else None
    done, done_failed = saved.load() if saved else ({}, {})
    if env.distributed and len(set(dist_mod.gather_objects(len(done) + len(done_failed), env))) > 1:
        raise ValueError(f"resume folder {resume}: the ranks see different saved rows; it must be on a "
                         "file system every rank reads")
    todo = [i for i in range(len(paths)) if i not in done and i not in done_failed]
    mine = [todo[k] for k in dist_mod.shard_range(len(todo), env)]
    if done or done_failed:
        log.info("resuming from %s: %d images done, %d to go", resume, len(done) + len(done_failed), len(todo))
    rows: list[tuple[int, np.ndarray]] = []
    failures: list[tuple[int, str]] = []
    try:
        steps = runner.run(model, [paths[i] for i in mine], layer, options, desc="features") if mine else []
        for step in steps:
            got = list(zip((mine[k] for k in step.indices), step.outputs.numpy()))
            lost = [(mine[k], why) for k, why in step.failures]
            rows += got
            failures += lost
            if saved:
                saved.add(got, lost)
    finally:
        if saved:
            saved.flush()
    merged = dist_mod.gather_to_main((rows, failures), env) if env.distributed else [(rows, failures)]
    if merged is None:      # another rank: its own shard
        return _features(model, paths, layer, rows, failures)
    rows = sorted([*done.items(), *(r for part, _ in merged for r in part)], key=lambda r: r[0])
    failures = sorted([*done_failed.items(), *(f for _, part in merged for f in part)])
    return _features(model, paths, layer, rows, failures)


def _features(model: nn.Module, paths: Sequence[Path], layer: str, rows: list[tuple[int, np.ndarray]],
              failures: list[tuple[int, str]]) -> Features:
    dim = {"logits": model.num_classes, "pool": model.num_features}.get(layer, TAPS[layer].channels)
    feats = np.stack([r[1] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return Features(feats, [str(paths[i]) for i, _ in rows], layer, [(str(paths[i]), why) for i, why in failures])


def _job(model: nn.Module, paths: Sequence[Path], layer: str, precision: str) -> str:
    """What makes saved rows reusable: the inputs in order, the weights, the layer and the precision."""
    h = hashlib.sha256(json.dumps([[str(p) for p in paths], layer, precision,
                                   getattr(model, "arch", ""), getattr(model, "config", {})],
                                  default=str).encode())
    h.update(state_dict_digest(model).encode())
    return h.hexdigest()


class _Saved:
    """Finished rows of one extraction in a folder, so that a stopped run resumes where it stopped.

    ``manifest.json`` names the job; each flush is one file, written atomically,
    ``part-r{rank}-{first index}.npz``: input indices, their features, and the failed images.
    """

    def __init__(self, folder: Path, job: str, rank: int) -> None:
        self.folder, self.job, self.rank = folder, job, rank
        self.rows: list[tuple[int, np.ndarray]] = []
        self.failed: list[tuple[int, str]] = []
        self.last = time.monotonic()

    def load(self) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        manifest = self.folder / "manifest.json"
        if self.folder.exists() and not manifest.exists() and _has_files(self.folder):
            raise ValueError(f"resume folder {self.folder} exists and is not ours (no manifest.json); "
                             "choose another --out or remove it")
        if manifest.exists():
            try:
                job = json.loads(manifest.read_text())["job"]
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"resume folder {self.folder}: unreadable manifest.json ({e}); "
                                 "pass --restart to start over") from None
            if job != self.job:
                raise ValueError(f"resume folder {self.folder} holds rows of another job (other images, "
                                 "weights, layer or precision); pass --restart to discard them")
        else:
            write_text_atomic(manifest, json.dumps({"job": self.job}) + "\n")
        rows: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part) as z:
                    rows.update(zip(z["indices"].tolist(), z["features"]))
                    failed.update(zip(z["failed_indices"].tolist(), z["failed_reasons"].tolist()))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                log.warning("resume folder: %s is unreadable (%s); its images are computed again", part, e)
        return rows, failed

    def add(self, rows: list[tuple[int, np.ndarray]], failed: list[tuple[int, str]]) -> None:
        self.rows += rows
        self.failed += failed
        if len(self.rows) + len(self.failed) >= FLUSH_ROWS or time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.rows and not self.failed:
            return
        first = min(i for i, _ in self.rows + self.failed)
        feats = np.stack([r for _, r in self.rows]).astype(np.float32) if self.rows else np.zeros((0, 0), np.float32)
        with atomic_path(self.folder / f"part-r{self.rank}-{first:010d}.npz") as tmp:
            np.savez(tmp, indices=np.array([i for i, _ in self.rows], np.int64), features=feats,
                     failed_indices=np.array([i for i, _ in self.failed], np.int64),
                     failed_reasons=np.array([why for _, why in self.failed], dtype=str))
        self.rows, self.failed = [], []


def _has_files(folder: Path) -> bool:
    """Anything but the hidden temporary files a rank may be writing this moment."""
    return any(not f.name.startswith(".") for f in folder.iterdir())


def partial_folder(out: str | os.PathLike) -> Path:
    """Where the command keeps finished rows while it writes ``out``: ``OUT.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def discard_partial(folder: str | os.PathLike) -> None:
    """Remove a resume folder (after its result was saved, or to start over)."""
    folder = Path(folder)
    if folder.exists() and not (folder / "manifest.json").exists() and _has_files(folder):
        raise ValueError(f"{folder} is not a resume folder (no manifest.json); not removing it")
    shutil.rmtree(folder, ignore_errors=True)


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
            save_file({"features": np.ascontiguousarray(result.features)}, str(tmp), metadata={
                "paths": json.dumps(result.paths), "layer": result.layer,
                "failures": json.dumps(result.failures)})
    if suffix == ".npy":
        write_text_atomic(out.with_suffix(".paths.txt"), "".join(p + "\n" for p in result.paths))
    return out
