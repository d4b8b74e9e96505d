"""The training state: `TrainState` is exactly what a checkpoint holds, and this module the one place that
writes and reads that layout.

A checkpoint file (last.pt, checkpoints/step-NNNNNNNN.pt) is `TrainState.to_checkpoint()`: a plain dict of
tensors and Python values tagged with `CHECKPOINT_FORMAT`, saved atomically with a sha256 digest of its
contents. It is read with `torch.load(weights_only=True)`, so loading one never runs pickled code; the
digest catches flipped bytes that torch.load does not notice. The last K are kept as hard links, and
`--resume` takes the newest good one (damaged ones are skipped with a message naming them).

Because the dict carries the network's state dict under "model" and its description under "meta",
`weights.load_model` also reads a checkpoint as a weights file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ..runtime.files import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "inceptionv3.train-checkpoint/1"
READABLE_FORMATS = (CHECKPOINT_FORMAT,)   # what `TrainState.from_checkpoint` reads; a new layout adds one

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupt, or not one of ours."""


@dataclass(kw_only=True)
class TrainState:
    """Everything a run needs to continue exactly where it stopped; one field per checkpoint key.

    `epoch` counts finished epochs; `step` is the position inside the next one (0 at an epoch end), and
    `epoch_state` then holds every rank's partial sums (`loop.EpochState` as a dict), None at an epoch end.
    `rng` is every rank's random generators (`resume.rng_state`), in rank order. `history` is the records of
    the finished epochs (metrics.jsonl's lines); None in checkpoints that predate it, whose history is
    read back from metrics.jsonl. `meta` describes the network as a weights file does (arch, model_config,
    num_classes, class_names, preprocess).
    """

    FORMAT: ClassVar[str] = CHECKPOINT_FORMAT
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "optimizer", "scheduler", "epoch", "config", "class_names")

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    ema: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    epoch_state: list[dict[str, Any]] | None = None
    rng: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    world_size: int = 1
    best_acc1: float = -1.0
    history: list[dict[str, Any]] | None = None
    config: dict[str, Any]
    class_names: list[str]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def mid_epoch(self) -> bool:
        return self.epoch_state is not None

    def to_checkpoint(self) -> dict[str, Any]:
        """The dict a checkpoint file holds: "format", then every field in declaration order."""
        return {"format": self.FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any], source: str | os.PathLike = "checkpoint") -> TrainState:
        """Inverse of `to_checkpoint`, for every format in READABLE_FORMATS; CheckpointError otherwise."""
        if not isinstance(d, dict) or d.get("format") not in READABLE_FORMATS:
            raise CheckpointError(f"{source}: not a training checkpoint (format {CHECKPOINT_FORMAT})")
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise CheckpointError(f"{source}: training checkpoint without {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if "world_size" not in d and d.get("rng"):
            values["world_size"] = len(d["rng"])
        return cls(**values)

    def save(self, out: str | os.PathLike, keep_last: int) -> Path:
        """out/last.pt, plus out/checkpoints/step-NNNNNNNN.pt keeping `keep_last` (see `write_checkpoint`)."""
        return write_checkpoint(Path(out), self.to_checkpoint(), keep_last)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainState:
        """A checkpoint file, its digest verified; CheckpointError if damaged or not a training checkpoint."""
        return cls.from_checkpoint(load_checkpoint(path), path)

    @classmethod
    def latest(cls, run: str | os.PathLike) -> tuple[TrainState, Path]:
        """The newest checkpoint of the run folder `run` that loads, matches its digest and has the layout."""
        return _newest_good(run, cls.load)


def _digest(state: dict[str, Any]) -> str:
    """sha256 over every tensor's bytes and every other value's repr, in order (the 'digest' key aside)."""
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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save `state` atomically (temp file, fsync, rename) with a 'digest' of its contents added: a
    crash never leaves a torn last.pt, and `load_checkpoint` can tell a damaged file."""
    state = {**state, "digest": _digest(state)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """A checkpoint file as its dict, read without running pickled code; CheckpointError if damaged."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch reports damage as RuntimeError, pickle or zip errors
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: not a training checkpoint (format {CHECKPOINT_FORMAT})")
    if verify and "digest" in state and _digest(state) != state["digest"]:
        raise CheckpointError(f"{path}: checkpoint contents do not match their digest (damaged file)")
    return state


def write_checkpoint(out: Path, state: dict[str, Any], keep_last: int) -> Path:
    """last.pt, plus checkpoints/step-NNNNNNNN.pt (a hard link: no extra space) keeping `keep_last`."""
    last = save_checkpoint(out / "last.pt", state)
    if keep_last > 0:
        folder = out / "checkpoints"
        folder.mkdir(exist_ok=True)
        dest = folder / f"step-{state['global_step']:08d}.pt"
        tmp = folder / f".{dest.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(last, tmp)
        os.replace(tmp, dest)
        for old in sorted(folder.glob("step-*.pt"))[:-keep_last]:
            old.unlink(missing_ok=True)
    return last


def checkpoint_candidates(run: str | os.PathLike) -> list[Path]:
    """A run folder's checkpoints, newest first: last.pt, then checkpoints/step-*.pt."""
    run = Path(run)
    found = [run / "last.pt"] if (run / "last.pt").is_file() else []
    return found + sorted((run / "checkpoints").glob("step-*.pt"), reverse=True)


def latest_good_checkpoint(run: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The newest checkpoint dict of `run` that loads and matches its digest; damaged ones are skipped
    with a warning naming them."""
    return _newest_good(run, load_checkpoint)


def _newest_good(run: str | os.PathLike, read: Callable[[Path], T]) -> tuple[T, Path]:
    candidates = checkpoint_candidates(run)
    if not candidates:
        raise ValueError(f"--resume {run}: no checkpoint there (last.pt or checkpoints/step-*.pt); "
                         "start the run without --resume")
    problems = []
    for path in candidates:
        try:
            state = read(path)
        except CheckpointError as e:
            problems.append(str(e))
            logger.warning("%s; trying the previous checkpoint", e)
            continue
        if problems:
            logger.warning("resuming from %s instead (%d damaged checkpoint(s) skipped)", path, len(problems))
        return state, path
    raise ValueError(f"--resume {run}: every checkpoint is damaged ({'; '.join(problems)}); "
                     "start the run again without --resume")
