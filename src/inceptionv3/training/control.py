"""How a run stops: SIGINT/SIGTERM after the current step (`stop_on_signals`), a lost torchrun peer
(`lost_peer`, `PeerLostError`), a run that cannot go on (`TrainingFailed`); and what holds for the run's
duration: deterministic kernels (`determinism`), progress lines from rank 0 only (`main_rank_logs`).
"""
from __future__ import annotations

import contextlib
import logging
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
    """An exception's first line, at most 200 characters, for one-line messages."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else line[:200] + "..."


class TrainingFailed(Exception):
    """The run cannot go on (no image could be read, the loss diverged); the message names the cause and the
    fix. The checkpoints written before are kept; the CLI prints the message and exits with 1."""


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
    """A `StopRequest` handling SIGINT and SIGTERM while the block runs; the previous handlers after."""
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
def main_rank_logs(is_main: bool) -> Iterator[None]:
    """Under torchrun, the library's INFO lines (set-up, engine, epochs) come from rank 0 only; the other
    ranks still log warnings. The logger's level is restored after."""
    log = logging.getLogger(__package__.split(".")[0])
    if is_main:
        yield
        return
    before = log.level
    log.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(before)


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
