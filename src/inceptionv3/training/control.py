"""Training: the small-data recipe as small functions, on one process or many (torchrun), crash-safe.

Recipe (works from scratch on a few thousand images, e.g. the embedded digits): AdamW without weight
decay on BN and bias parameters, a one-cycle LR schedule stepped per optimizer step, label smoothing 0.1,
gradient clipping at 2.0, aux loss weighted 0.4 when the aux head is on (only possible at >= 299 px).

A run folder holds: config.json (the TrainConfig, written first), metrics.jsonl (one JSON line per
epoch), last.pt (the newest checkpoint: model, optimizer, scheduler, every rank's RNG states, epoch and
step within it, partial epoch sums, history, config, class names, and a digest of it all), checkpoints/
(the last `keep_last` checkpoints, hard links named by global step), best.safetensors (the best
held-out top-1 so far, with class names and preprocessing, loadable by `weights.load_model`),
confusion.json (that epoch's held-out confusion matrix), bad_images.txt (images skipped, when any) and
tensorboard/ (event files, when tensorboard is installed). Checkpoint files are handled by `checkpoint.py`.

By default the step runs in bf16 autocast where the hardware has native bf16 (`--amp auto`) on
channels-last tensors; `--grad-checkpointing` trades compute for memory and `--compile` runs the forward
through torch.compile. A linear probe computes the frozen backbone's features once (`cache_features`).

Checkpoints are written atomically every epoch and every `save_every` steps; `resume` continues from the
newest one that loads and matches its digest. The data order is a pure function of (seed, epoch) and each
sample's augmentation of (seed, epoch, index), so a resumed or multi-process run sees exactly the batches
an uninterrupted single-process run sees.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import torch


class PeerLostError(ConnectionError):
    """Under torchrun, another rank died (or its machine did): this rank stops without writing anything."""


def lost_peer(e: BaseException) -> bool:
    """Whether `e` is a collective failing because a peer process went away (gloo, NCCL, the store)."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(e)
    return isinstance(e, dist_error) or any(s in text for s in (
        "Connection reset by peer", "Connection closed by peer", "gloo", "NCCL", "Broken pipe"))


def first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else line[:200] + "..."


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT: the current step finished, a checkpoint was written; the message says how to resume."""


class StopRequest:
    """Signal handler: the first SIGINT/SIGTERM asks the loop to stop after the current step; a second
    SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop   # signal handlers can only be installed from the main thread
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def determinism(on: bool) -> Iterator[None]:
    """Deterministic kernels for the run (`--deterministic`); the global switches are restored after."""
    if not on:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS needs it for reproducible GEMMs
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.benchmark, cudnn.deterministic)
    torch.use_deterministic_algorithms(True, warn_only=True)   # warn, not fail, on ops without one
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic = before[2], before[3]
