"""The training state: `TrainState` is exactly what a checkpoint holds, and this module the one place that
writes and reads that layout.

A checkpoint file (last.pt) is `TrainState.to_checkpoint()`: a plain dict of tensors and Python values
tagged with `CHECKPOINT_FORMAT`, saved atomically with a sha256 digest of its contents. It is read with
`torch.load(weights_only=True)`, so loading one never runs pickled code; the digest catches flipped bytes
that torch.load does not notice. A run keeps one such full state: the optimizer's moments make it about
three times the weights. The last K step snapshots, checkpoints/step-NNNNNNNN.safetensors, hold the
weights only (a weights file: `predict --weights`, `train --weights`). Runs from before kept full states
as checkpoints/step-NNNNNNNN.pt; `--resume` takes the newest good full state (damaged ones are skipped
with a message naming them).

Because the dict carries the network's state dict under "model" and its description under "meta",
`weights.load_model` also reads a checkpoint as a weights file.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ..runtime.files import atomic_path
from ..weights.io import checkpoint_digest as _digest
from .records import writing

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
    read back from metrics.jsonl. `amp` is the run's `amp.AmpChoice` (what `--amp auto` decided, or its
    timing so far); None in checkpoints that predate it. `meta` describes the network as a weights file does (arch, model_config,
    num_classes, class_names, preprocess).
    """

    FORMAT: ClassVar[str] = CHECKPOINT_FORMAT
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "optimizer", "scheduler", "epoch", "config", "class_names")
    # Keys added to the layout after its format was named: written only when set, so that a state read
    # from an older file is saved as it was.
    ADDED: ClassVar[tuple[str, ...]] = ("amp",)

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
    amp: dict[str, Any] | None = None
    config: dict[str, Any]
    class_names: list[str]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def mid_epoch(self) -> bool:
        return self.epoch_state is not None

    def to_checkpoint(self) -> dict[str, Any]:
        """The dict a checkpoint file holds: "format", then every field in declaration order (the `ADDED`
        ones only when set)."""
        return {"format": self.FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                          if f.name not in self.ADDED or getattr(self, f.name) is not None}}

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

    def save(self, out: str | os.PathLike) -> Path:
        """out/last.pt, atomically (the previous one stays whole if the write fails)."""
        return save_checkpoint(Path(out) / "last.pt", self.to_checkpoint())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainState:
        """A checkpoint file, its digest verified; CheckpointError if damaged or not a training checkpoint."""
        return cls.from_checkpoint(load_checkpoint(path), path)

    @classmethod
    def latest(cls, run: str | os.PathLike) -> tuple[TrainState, Path]:
        """The newest checkpoint of the run folder `run` that loads, matches its digest and has the layout."""
        return _newest_good(run, cls.load)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save `state` atomically (temp file, fsync, rename) with a 'digest' of its contents added: a
    crash never leaves a torn last.pt, and `load_checkpoint` can tell a damaged file. A failed write (a
    full disk) is an OSError naming `path`, and the file there before is left as it was."""
    state = {**state, "digest": _digest(state)}
    with writing(Path(path), f"the previous {Path(path).name} is intact: once fixed, continue with "
                             f"--resume {Path(path).parent}"), atomic_path(path) as tmp:
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


STEP_FOLDER = "checkpoints"


def step_weights_path(out: Path, global_step: int) -> Path:
    """Where the weights snapshot of `global_step` goes: checkpoints/step-NNNNNNNN.safetensors."""
    return out / STEP_FOLDER / f"step-{global_step:08d}.safetensors"


def prune_step_weights(out: Path, keep_last: int) -> None:
    """Remove all but the newest `keep_last` weights snapshots (full states of older runs stay)."""
    snapshots = sorted((out / STEP_FOLDER).glob("step-*.safetensors"))
    for old in snapshots[: max(0, len(snapshots) - keep_last)]:
        old.unlink(missing_ok=True)


def checkpoint_candidates(run: str | os.PathLike) -> list[Path]:
    """A run folder's full training states, newest first: last.pt, then the step-*.pt of older runs."""
    run = Path(run)
    found = [run / "last.pt"] if (run / "last.pt").is_file() else []
    return found + sorted((run / STEP_FOLDER).glob("step-*.pt"), reverse=True)


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
    snapshots = sorted(Path(run, STEP_FOLDER).glob("step-*.safetensors"))
    keep = (f"; the newest weights, {snapshots[-1]}, can start a new run (--weights {snapshots[-1]} "
            "--out NEW)") if snapshots else ""
    raise ValueError(f"--resume {run}: every checkpoint is damaged ({'; '.join(problems)}){keep}; "
                     "or start the run again with --overwrite")
