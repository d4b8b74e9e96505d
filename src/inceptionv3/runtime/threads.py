"""Where the work runs: device choice and the thread budget.

A few cores are easy to oversubscribe: when another thread holds one of them, a torch op split over all
cores waits for it at every barrier and slows far more than by that core's share (docs/performance.md).
Compute threads and decode workers are therefore budgeted together. Nothing here imports torch at
module level, so a command can set the OpenMP environment before torch loads.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from its heap and keep the memory freed there for reuse.

    Inference allocates the same activations for every batch, many of them larger than glibc's largest
    mmap threshold (32 MB; one 147 x 147 x 64 fp32 map at batch 32 is 177 MB). Such blocks are mapped
    afresh for each allocation and unmapped when freed, so the kernel zero-fills their pages again for
    every batch: a third of a core's time went to it on the `features` benchmark (docs/performance.md).
    From the heap, a freed block is reused by the next batch. The price: the process keeps its peak
    memory until it exits, which a run over batches of one shape reaches again at every batch anyway.

    A ``MALLOC_*`` setting in the environment or a preloaded allocator (jemalloc, tcmalloc) wins; off
    glibc this does nothing. Returns whether the setting was made.
    """
    if not sys.platform.startswith("linux") or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt     # the C library this process runs on
    except (OSError, AttributeError):           # musl and others without it
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def prepare_process(inference: bool = False) -> None:
    """Settings a command applies as it starts, before torch loads (never at import: a library leaves
    its user's environment alone).

    A command that runs the network forward over many batches of one shape (``inference``) also keeps
    freed memory for reuse (``keep_freed_memory``).

    OpenMP threads that spin while they wait take the time slice their partner needs whenever another
    process shares the cores; a short spin before sleeping keeps the quiet-machine speed and most of the
    gain of never spinning under load (docs/performance.md). OpenMP reads the setting once, when torch
    loads, so it is made only while torch is not loaded yet; a wait policy or spin count the user
    exported wins.
    """
    if inference:
        keep_freed_memory()
    if "torch" in sys.modules:
        return
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "10000"


def available_cores() -> int:
    """Cores this process may use: its CPU affinity set, shared equally by the processes torchrun
    started on this machine (LOCAL_WORLD_SIZE), so N ranks on one machine do not oversubscribe it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_procs = 1
    return max(1, cores // local_procs)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; an unavailable explicit choice is an error.

    The one device choice of every command (torch is imported here, not at module level: see
    ``prepare_process``).
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


THREADS_ENV = "INCEPTIONV3_NUM_THREADS"


def env_threads() -> int | None:
    """The compute threads ``INCEPTIONV3_NUM_THREADS`` pins (None when unset or empty); anything but a
    whole number >= 1 is a ValueError naming the variable."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads >= 1 "
                         f"(e.g. {THREADS_ENV}=2); set it so or unset it")
    return n


_bounded_once: set[tuple[int, int]] = set()


def bound_workers(workers: int) -> int:
    """``workers`` decode processes, at most one per core this process may use (``available_cores``).

    More processes than cores decode no faster; each costs a copy of the interpreter and its prefetched
    batches in memory. The bound is logged once per process and value.
    """
    cores = available_cores()
    if workers <= cores:
        return workers
    if (workers, cores) not in _bounded_once:
        _bounded_once.add((workers, cores))
        log.warning("%d decode workers asked for; using %d, one per core this process may use "
                    "(more only cost memory)", workers, cores)
    return cores


def set_compute_threads(workers: int, threads: int | None = None) -> int:
    """Give torch the cores the decode workers leave free (at least one), unless told otherwise.

    ``INCEPTIONV3_NUM_THREADS`` overrides the default, so a test suite or a shared machine can pin it.
    """
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
    if threads is None:
        threads = env_threads() or max(1, available_cores() - workers)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        log.debug("torch compute threads: %d (decode workers: %d)", threads, workers)
    return threads


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads inside the block, then restore the budget."""
    import torch
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)
