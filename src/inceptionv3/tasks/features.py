"""Feature extraction: one N x D float32 matrix per folder of images, for transfer learning and metrics.

``extract_features`` runs the engine over the images (sharded under torchrun) and keeps finished rows in a
resume folder as it goes; ``save_features`` writes the result as .npy, .npz or .safetensors.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from torch import nn

from ..data.paths import expand_paths
from ..engine import runner
from ..engine.options import Calibration, EngineOptions, engine_options
from ..engine.resolve import resolve_engine
from ..models.taps import TAPS
from ..runtime import distributed as dist_mod
from ..runtime.files import atomic_path, path_lines, quote_path, write_text_atomic
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
    weights, layer and precision, only the missing images are computed, on the engine (backend,
    precision) that computed the kept rows. A folder holding rows of another job is an error; one
    without rows is taken over; ``restart`` discards the folder's rows first. Remove the folder once the result is saved
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
    # Resolved once for the whole job (not for the images left to do): a resumed run computes its rows on
    # the engine the first run used, so they equal an uninterrupted run's.
    precision, backend = resolve_engine(options.precision, options.backend, dev, layer, len(paths))
    if resume is not None and restart:
        if env.is_main:
            discard_partial(resume)
        dist_mod.barrier(env)
    saved = _Saved(Path(resume), _job(model, paths, layer, options.precision), env.rank) \
        if resume is not None else None
    done, done_failed = saved.load() if saved else ({}, {})
    if saved and saved.engine and (done or done_failed):
        precision, backend = _resumed_engine(saved.folder, saved.engine, options)
    # A fresh job hands "auto" to the engine, which may time bf16 against fp32 on its first batch
    # (engine.resolve.faster); the precision it runs is what the resume record keeps (set per batch below).
    # A resumed job runs the recorded one.
    resumed = bool(saved and saved.engine and (done or done_failed))
    options = dataclasses.replace(options, precision=precision if resumed else options.precision,
                                  backend=backend)
    if saved:
        saved.engine = {"backend": backend, "precision": precision}
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
                saved.engine = {"backend": backend, "precision": step.precision}
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


def _resumed_engine(folder: Path, engine: dict, options: EngineOptions) -> tuple[str, str]:
    """(precision, backend) the saved rows were computed with; an explicit other choice is an error."""
    for flag, key in (("--backend", "backend"), ("--precision", "precision")):
        asked = getattr(options, key)
        if asked != "auto" and asked != engine.get(key):
            raise ValueError(f"resume folder {folder}: its rows were computed with {flag} {engine.get(key)}, "
                             f"not {asked}; pass {flag} {engine.get(key)} (or auto) to continue, or --restart")
    return str(engine["precision"]), str(engine["backend"])


def _job(model: nn.Module, paths: Sequence[Path], layer: str, precision: str) -> str:
    """What makes saved rows reusable: the inputs in order, the weights, the layer and the precision."""
    h = hashlib.sha256(json.dumps([[str(p) for p in paths], layer, precision,
                                   getattr(model, "arch", ""), getattr(model, "config", {})],
                                  default=str).encode())
    h.update(state_dict_digest(model).encode())
    return h.hexdigest()


# Files the resume folder holds: the manifest, the parts, and the temporary files of their atomic writes.
_PART = re.compile(r"part-r\d+-\d+\.npz")
_OURS = re.compile(r"manifest\.json|part-r\d+-\d+\.npz|\.(manifest\.json|part-r\d+-\d+\.npz)\..*tmp.*")


class _Saved:
    """Finished rows of one extraction in a folder, so that a stopped run resumes where it stopped.

    ``manifest.json`` names the job and the engine (backend, precision) that computed its rows; it is
    written with the first part, so a run that stops before any row leaves nothing that could block the
    next one. Each flush is one file, written atomically, ``part-r{rank}-{first index}.npz``: input
    indices, their features, and the failed images. A folder of another job with no rows is taken over.
    """

    def __init__(self, folder: Path, job: str, rank: int) -> None:
        self.folder, self.job, self.rank = folder, job, rank
        self.engine: dict | None = None
        self.rows: list[tuple[int, np.ndarray]] = []
        self.failed: list[tuple[int, str]] = []
        self.last = time.monotonic()
        self.wrote_manifest = False

    def load(self) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        if not self.folder.exists():
            return {}, {}
        foreign = _foreign_files(self.folder)
        manifest = self.folder / "manifest.json"
        parts = sorted(f for f in self.folder.iterdir() if _PART.fullmatch(f.name))
        if foreign and not manifest.exists():
            raise ValueError(f"resume folder {self.folder} exists and is not ours (no manifest.json; it holds "
                             f"{quote_path(foreign[0].name)}); choose another --out or move it")
        if not parts:      # nothing computed yet: whatever job made the folder, nothing is lost
            return {}, {}
        try:
            saved = json.loads(manifest.read_text())
            job, self.engine = saved["job"], saved.get("engine")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"resume folder {self.folder}: unreadable manifest.json ({e}); "
                             "pass --restart to start over") from None
        if job != self.job:
            raise ValueError(f"resume folder {self.folder} holds rows of another job (other images, "
                             "weights, layer or precision); pass --restart to discard them")
        self.wrote_manifest = True
        rows: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        for part in parts:
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
        if not self.wrote_manifest:    # before this rank's first part: a part is never without it
            # (every rank writes the same manifest, atomically, so no rank's part waits for another rank)
            write_text_atomic(self.folder / "manifest.json",
                              json.dumps({"job": self.job, "engine": self.engine}) + "\n")
            self.wrote_manifest = True
        first = min(i for i, _ in self.rows + self.failed)
        feats = np.stack([r for _, r in self.rows]).astype(np.float32) if self.rows else np.zeros((0, 0), np.float32)
        with atomic_path(self.folder / f"part-r{self.rank}-{first:010d}.npz") as tmp:
            np.savez(tmp, indices=np.array([i for i, _ in self.rows], np.int64), features=feats,
                     failed_indices=np.array([i for i, _ in self.failed], np.int64),
                     failed_reasons=np.array([why for _, why in self.failed], dtype=str))
        self.rows, self.failed = [], []


def _foreign_files(folder: Path) -> list[Path]:
    """What in a resume folder features did not write (by name)."""
    return sorted(f for f in folder.iterdir() if not _OURS.fullmatch(f.name))


def partial_folder(out: str | os.PathLike) -> Path:
    """Where the command keeps finished rows while it writes ``out``: ``OUT.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def discard_partial(folder: str | os.PathLike) -> None:
    """Remove a resume folder (after its result was saved, or to start over): the files features wrote
    there, and the folder once empty. Files it did not write are left, and named in the error."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a resume folder (a file); move it or choose another --out")
    foreign = _foreign_files(folder)
    if foreign:
        raise ValueError(f"{folder} holds files features did not write ({quote_path(foreign[0].name)}"
                         f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); not removing "
                         "them: move them, or choose another --out")
    for f in folder.iterdir():
        f.unlink(missing_ok=True)
    folder.rmdir()


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of a run writing ``out``: ``OUT.lock`` beside it, holding the run's pid."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


class OutputBusy(ValueError):
    """Another run holds the lock of the same output."""


@contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``OUT.lock`` (an exclusive ``flock``, released by the system if the process dies) while a run
    writes ``out`` and its resume folder; a second run on the same output gets ``OutputBusy`` naming the
    first run's pid. The lock file is removed on the way out."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusy(f"--out {out}: another run (pid {holder}) is writing it and holds {path}; wait "
                             "for it to finish, or choose another --out") from None
        try:   # the run before us may have removed the file between our open and our lock: lock the new one
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)      # still locked: a run that opens it now finds it gone and retries
        os.close(fd)


def _pair_paths(out: Path) -> Path:
    """The paths file of a ``.npy`` output."""
    return out.with_suffix(".paths.txt")


def save_features(result: Features, out: str | os.PathLike) -> Path:
    """Write ``.npy`` (plus ``.paths.txt`` beside it), ``.npz`` or ``.safetensors``; atomically.

    A ``.npy`` is one of a pair: the old ``.paths.txt`` goes first, then the matrix, then its paths, so a
    stop at any moment leaves the old pair, the new pair, or a matrix without its paths (to be written by
    running the command again), never a matrix beside another run's paths. The paths file holds one path
    a line, a path that a line cannot hold plainly as a JSON string (``formats.render_path``).
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FEATURE_FORMATS:
        raise ValueError(f"--out {out}: unknown format {suffix!r}; use one of {', '.join(FEATURE_FORMATS)}")
    if suffix == ".npy":
        _pair_paths(out).unlink(missing_ok=True)
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
        write_text_atomic(_pair_paths(out), path_lines(result.paths))
    return out
