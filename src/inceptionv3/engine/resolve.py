"""Which precision and backend run: what this machine has (native bf16, installed runtimes), the "auto"
policy, and one clear error for a choice that cannot run here.

bf16 being native does not make it the faster choice everywhere: on a few shared cores a 2-thread
kernel waits at every barrier for the thread whose core another process holds, and the bf16 kernels
(more, shorter parallel regions for reorders and small convolutions) can lose far more than fp32 there
(docs/performance.md). So where "auto" has a real choice on a multi-threaded CPU, it times both on the
job's own network and shapes for a moment and takes the faster (``faster``); elsewhere the native-bf16
rule stands.
"""
from __future__ import annotations

import importlib.util
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .options import (
    AUTO_EXPORT_MIN_IMAGES,
    BACKENDS,
    EXPORTED_OUTPUTS,
    PACKAGES,
    PRECISIONS,
    SUPPORTED,
)

log = logging.getLogger(__name__)

# Rounds of the timed comparison after one warm-up call each; the static choice is kept unless the
# other is faster by more than the margin, so timing noise on a quiet machine changes nothing.
PROBE_ROUNDS = 2
PROBE_MARGIN = 1.05


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 runs natively: CPU with AMX or AVX512_BF16, or a CUDA device that supports bf16."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:   # not Linux: ask oneDNN
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def _installed(backend: str) -> bool:
    if backend == "torch":
        return True
    # the runtime, plus what exports our graph to it
    return all(importlib.util.find_spec(p) is not None for p in (PACKAGES[backend][0], "onnx", "onnxscript"))


def resolve_precision(precision: str, device: str | torch.device = "cpu", backend: str = "torch") -> str:
    """'auto' -> 'bf16' where it runs natively (and the backend has it), else 'fp32'.

    An explicit choice that cannot run here raises ValueError naming the nearest one that can; there is
    no silent fallback, since that would change results.
    """
    if precision not in ("auto",) + PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    have = SUPPORTED.get(backend, ())
    if precision == "auto":
        return "bf16" if native_bf16(dev) and "bf16" in have else "fp32"
    if precision == "bf16" and not native_bf16(dev):
        raise ValueError(f"precision bf16: this {dev.type.upper()} has no native bf16 "
                         "(needs AMX or AVX512_BF16 on CPU, or a bf16-capable GPU); use --precision fp32"
                         + ("" if dev.type != "cpu" else " or --precision int8"))
    if precision == "int8" and dev.type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU only (OpenVINO or ONNX Runtime); use --device cpu, "
                         f"or --precision bf16 on {dev}")
    if precision not in have:
        # fastest first on the CPUs measured (docs/performance.md)
        others = [b for b in ("openvino", "torch", "onnxruntime") if precision in SUPPORTED[b] and _installed(b)
                  and not (b == "openvino" and precision == "int8" and not _installed("onnxruntime"))]
        hint = (f"use --backend {others[0]} for {precision}" if others
                else f"use --precision {have[0]} with --backend {backend}")
        raise ValueError(f"precision {precision} is not available on the {backend} backend; {hint}")
    return precision


def resolve_backend(backend: str, precision: str = "fp32", device: str | torch.device = "cpu",
                    output: str = "logits", images: int | None = None) -> str:
    """'auto' -> the fastest installed backend for this precision and output (docs/performance.md).

    int8 runs on OpenVINO where it and ONNX Runtime (its quantizer) are installed, its int8 kernels being
    the faster; else on ONNX Runtime. fp32 and bf16 run on OpenVINO (then ONNX Runtime, fp32 only) when
    the job has at least ``AUTO_EXPORT_MIN_IMAGES`` images: they beat oneDNN-in-torch on the CPU, more so
    when another process shares the cores, but the first run pays a one-time export of the graph.
    Smaller jobs, GPUs, taps other than logits/pool, and ``images=None`` stay on torch.
    A named backend whose package is missing raises ValueError with the pip command and the nearest
    available backend.
    """
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    dev = torch.device(device)
    if backend == "auto":
        if precision == "int8":
            backend = "openvino" if _installed("openvino") and _installed("onnxruntime") else "onnxruntime"
        elif (dev.type == "cpu" and output in EXPORTED_OUTPUTS and images is not None
              and images >= AUTO_EXPORT_MIN_IMAGES):
            return next((b for b in ("openvino", "onnxruntime") if _installed(b) and precision in SUPPORTED[b]),
                        "torch")
        else:
            return "torch"
    if not _installed(backend):
        package, cmd = PACKAGES[backend]
        nearest = next((b for b in BACKENDS if _installed(b) and precision in SUPPORTED[b]), "torch")
        raise ValueError(f"backend {backend} needs the {package} package: {cmd}; "
                         f"or use --backend {nearest}")
    if backend == "openvino" and precision == "int8" and not _installed("onnxruntime"):
        raise ValueError("int8 on OpenVINO is quantized with ONNX Runtime's quantizer: "
                         f"{PACKAGES['onnxruntime'][1]}; or use --precision bf16 --backend openvino")
    if backend != "torch" and dev.type != "cpu":
        raise ValueError(f"backend {backend} runs on the CPU here; use --device cpu or --backend torch")
    if backend != "torch" and output not in EXPORTED_OUTPUTS:
        raise ValueError(f"output {output!r} is computed by the torch backend only "
                         f"({backend} runs {' and '.join(EXPORTED_OUTPUTS)}); use --backend torch")
    return backend


def resolve_engine(precision: str, backend: str, device: str | torch.device = "cpu", output: str = "logits",
                   images: int | None = None) -> tuple[str, str]:
    """(precision, backend) that will run ``output`` on ``device``, both resolved from "auto" as needed.

    precision "auto" asks for bf16 where it runs natively, then takes the backend that suits that, and
    falls back to fp32 where the backend has no bf16.
    """
    dev = torch.device(device)
    wanted = ("bf16" if native_bf16(dev) else "fp32") if precision == "auto" else precision
    backend = resolve_backend(backend, wanted, dev, output, images)
    return resolve_precision(precision, dev, backend), backend


def worth_timing(device: str | torch.device, threads: int, distributed: bool = False) -> bool:
    """Whether "auto" should time fp32 against bf16 rather than take the native-bf16 rule.

    Only a CPU with native bf16 has a choice, and only several compute threads meet the barrier
    stalls that make it matter. One thread (as in the test suite) keeps the static rule, and so do
    torchrun ranks, which must all make the same choice."""
    dev = torch.device(device)
    return dev.type == "cpu" and threads > 1 and not distributed and native_bf16(dev)


def alternating_order(candidates: Sequence[str], rounds: int = PROBE_ROUNDS) -> list[str]:
    """The calls a timed comparison makes: each candidate once (its warm-up), then ``rounds`` rounds, in
    turn forwards and backwards, so a load that comes and goes falls on all of them alike."""
    order = list(candidates)
    for r in range(rounds):
        order += candidates if r % 2 == 0 else list(reversed(candidates))
    return order


def time_alternating(run: Callable[[str], object], candidates: Sequence[str], rounds: int = PROBE_ROUNDS,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of ``run(candidate)`` for each candidate, in ``alternating_order``; the warm-up
    calls (kernel selection, caches) are not timed."""
    times: dict[str, list[float]] = {c: [] for c in candidates}
    for i, c in enumerate(alternating_order(candidates, rounds)):
        t0 = clock()
        run(c)
        if i >= len(candidates):
            times[c].append(clock() - t0)
    return {c: statistics.median(v) for c, v in times.items()}


def choose(times: dict[str, float], static: str, other: str, what: str) -> str:
    """``static`` unless ``times`` (seconds) show ``other`` faster by more than ``PROBE_MARGIN``; logs both."""
    choice = other if times[other] * PROBE_MARGIN < times[static] else static
    log.info("%s auto: %s (timed here: %s)", what, choice,
             ", ".join(f"{c} {1000 * t:.0f} ms" for c, t in times.items()))
    return choice


def faster(run: Callable[[str], object], static: str, other: str, what: str, rounds: int = PROBE_ROUNDS,
           clock: Callable[[], float] = time.perf_counter) -> str:
    """``static`` unless timing ``run`` shows ``other`` faster by more than ``PROBE_MARGIN`` (``choose``)."""
    return choose(time_alternating(run, (static, other), rounds, clock), static, other, what)
