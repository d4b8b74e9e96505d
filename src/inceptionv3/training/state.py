"""Training checkpoints: written atomically with a digest of their contents, verified on load, the last K
kept as hard links, and the newest good one found for `--resume` (damaged ones are skipped with a message).

A checkpoint is a plain dict of tensors and Python values (`train` decides what goes in); it is read with
`torch.load(weights_only=True)`, so loading one never runs pickled code.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..runtime.files import atomic_path

logger = logging.getLogger(__name__)


CHECKPOINT_FORMAT = "inceptionv3.train-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupt, or not one of ours."""


def _digest(state: dict[str, Any]) -> str:
    """sha256 over every tensor's bytes and every other value's repr, in order (the 'digest' key aside).

    torch.load notices a truncated file but not flipped bytes inside a tensor; this does.
    """
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
    """torch.save `state` atomically (temp file, fsync, rename): a crash never leaves a torn last.pt.

    A 'digest' of the contents is added, so that `load_checkpoint` can tell a damaged file."""
    state = {**state, "digest": _digest(state)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """A last.pt written by `train`, read without running pickled code; CheckpointError if damaged."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch reports damage as RuntimeError, pickle or zip errors
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
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
    """The newest checkpoint of `run` that loads and matches its digest; damaged ones are skipped with a
    warning naming them."""
    candidates = checkpoint_candidates(run)
    if not candidates:
        raise ValueError(f"--resume {run}: no checkpoint there (last.pt or checkpoints/step-*.pt); "
                         "start the run without --resume")
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            logger.warning("%s; trying the previous checkpoint", e)
            continue
        if problems:
            logger.warning("resuming from %s instead (%d damaged checkpoint(s) skipped)", path, len(problems))
        return state, path
    raise ValueError(f"--resume {run}: every checkpoint is damaged ({'; '.join(problems)}); "
                     "start the run again without --resume")
