"""The benchmark harness behind ``inceptionv3 bench``: our engines next to torchvision, ONNX Runtime and
OpenVINO, measured in one process, in alternation, on this machine.

What a row reports and how it is measured:

* **time**: each runtime is built and warmed up, then the runtimes of one family (torch, ONNX Runtime,
  OpenVINO: those sharing a thread pool) and one batch size are timed in alternation (one call each per
  round), so a neighbour that steals a core slows those rows alike. Families run one after the other,
  torch first, because idle ONNX Runtime/OpenVINO threads spin and starve torch's OpenMP threads.
  ms per batch is the median call; img/s is batch / median; p50 and p99 are percentiles of the same
  calls (batch 1 gets ``latency_repeats`` calls where given, so that its p99 can mean something).
* **GFLOP/s and % of peak**: the network's multiply-adds (``models.summary.summarize``) x 2 x img/s, against a
  large matrix product timed in this process at the row's precision (fp32/bf16 ``torch.mm``, int8
  ``torch._int_mm``): the speed this CPU reaches on the easiest possible work, not a datasheet number.
* **memory**: how far the process's peak resident set (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``) rose, during the warm-up calls, above the resident set before the runtime
  was built: its weights copy, workspaces and activations, not the build's passing peak (exports,
  calibration). Freed heap is handed back (``malloc_trim``) before each reading so earlier rows do not
  hide in it. Python-level tracers do not see oneDNN, ONNX Runtime or OpenVINO allocations; this does.
* **agreement**: every row's output on its timing batch against the plain fp32 model's logits
  (max abs difference / max abs logit), and our network against torchvision's before anything is timed.
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.loaders import default_workers
from ..engine.backends import ort_session
from ..engine.engine import build_engine
from ..engine.onnx import export_onnx
from ..engine.options import BACKENDS, MIN_CALIBRATION_IMAGES, PRECISIONS
from ..engine.resolve import native_bf16, resolve_backend, resolve_precision
from ..models.builder import ARCHS, build_model
from ..models.summary import summarize
from ..runtime.files import write_text_atomic
from ..runtime.threads import available_cores
from . import COMPARE

log = logging.getLogger(__name__)

Runner = Callable[[torch.Tensor], torch.Tensor]

FAMILIES = ("torch", "onnxruntime", "openvino")   # runtimes that share a thread pool, timed together
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
CALIBRATION_IMAGES = 32          # random images: calibration quality does not change the speed
AGREE_TOL = 1e-4                 # ours vs torchvision, plain fp32 (relative to the largest logit)

# Matrix-product probe per precision: (dtype, side), large enough that one product is timed well above
# the timer's resolution and small enough to keep the probe short.
PEAK_PROBES: dict[str, tuple[torch.dtype, int]] = {
    "fp32": (torch.float32, 2048),
    "bf16": (torch.bfloat16, 4096),
    "int8": (torch.int8, 4096),
}


@dataclass(frozen=True)
class BenchConfig:
    arch: str = "inception_v3"
    batch_sizes: tuple[int, ...] = (1, 16)
    image_size: int = 299
    precisions: tuple[str, ...] = ("fp32", "bf16", "int8")
    backends: tuple[str, ...] | None = None   # default: every installed backend
    compare: tuple[str, ...] = COMPARE
    repeats: int = 10
    latency_repeats: int | None = None   # batch-1 calls (None: repeats); more make p99 mean something
    warmup: int = 3
    threads: int | None = None   # default: every core this process may use
    seed: int = 0


@dataclass
class Row:
    name: str
    batch_size: int
    backend: str
    precision: str
    reference: bool              # a comparison (torchvision, ONNX Runtime, OpenVINO), not our engine
    describe: str = ""
    ready_s: float = 0.0         # build + first call (sessions, exports and kernels made on first use)
    times_ms: list[float] = field(default_factory=list)
    ms_per_batch: float = math.nan
    img_per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    gflops: float = math.nan
    pct_peak: float = math.nan
    peak_rss_mb: float | None = None    # the row's rise over its baseline (see module docstring)
    rel_diff: float = math.nan
    ratios: dict[str, float] = field(default_factory=dict)   # img/s over each comparison's, same batch


def check_config(cfg: BenchConfig) -> None:
    """One clear error per bad value (the CLI maps ValueError to exit code 2)."""
    def known(flag: str, values: Sequence[str], allowed: Sequence[str]) -> None:
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"{flag} {','.join(bad) or '(empty)'}: unknown; choose from {','.join(allowed)}")

    if cfg.arch not in ARCHS:
        raise ValueError(f"--arch {cfg.arch}: unknown; choose from {', '.join(ARCHS)}")
    known("--precision", cfg.precisions, PRECISIONS)
    if cfg.backends is not None:
        known("--backend", cfg.backends, BACKENDS)
    if cfg.compare:
        known("--compare", cfg.compare, COMPARE)
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise ValueError(f"--batch-size {','.join(map(str, cfg.batch_sizes))}: every batch size must be >= 1")
    if cfg.image_size < 75:
        raise ValueError(f"--image-size {cfg.image_size}: InceptionV3 needs at least 75 px")
    for flag, value, low in (("--repeats", cfg.repeats, 1), ("--latency-repeats", cfg.latency_repeats, 1),
                             ("--warmup", cfg.warmup, 0)):
        if value is not None and value < low:
            raise ValueError(f"{flag} {value}: must be >= {low}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"--threads {cfg.threads}: must be >= 1")


def cpu_info() -> dict:
    """CPU model and the instruction-set flags that decide which precisions are fast."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "cores": available_cores(), "flags": [f for f in CPU_FLAGS if f in flags]}


def versions() -> dict[str, str | None]:
    import torchvision

    # The modules' own strings for torch (they carry the build, e.g. +cpu); metadata for packages
    # that are slow to import.
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                     "torchvision": torchvision.__version__}
    for pkg in ("inceptionv3", "onnxruntime", "openvino"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def matmul_peak(precisions: Sequence[str], rounds: int = 3) -> dict[str, dict]:
    """Best-of-``rounds`` speed of one large matrix product per precision, in GFLOP/s (GOP/s for int8)."""
    out: dict[str, dict] = {}
    g = torch.Generator().manual_seed(0)
    for p in precisions:
        dtype, n = PEAK_PROBES[p]
        if dtype is torch.int8:
            a = torch.randint(-64, 64, (n, n), dtype=dtype, generator=g)
            b = torch.randint(-64, 64, (n, n), dtype=dtype, generator=g)
            op, what = torch._int_mm, f"torch._int_mm {n}x{n}x{n} int8->int32"
        else:
            a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
            op, what = torch.mm, f"torch.mm {n}x{n}x{n} {p}"
        try:
            op(a, b)   # first call creates the kernel
            best = min(_timed(op, a, b) for _ in range(rounds))
        except RuntimeError as e:   # e.g. no int8 matmul kernel on this CPU build
            out[p] = {"gflops": None, "what": what, "note": f"not measured: {str(e).splitlines()[0]}"}
            continue
        out[p] = {"gflops": 2 * n**3 / best / 1e9, "what": what}
    return out


def _timed(fn: Callable[..., object], *args: object) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def status_mb(key: str, pid: int | str = "self") -> float | None:
    """A memory figure of a process from Linux's /proc/PID/status (``VmRSS``, ``VmHWM``, ...) in MB, or
    None where /proc cannot say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakRSS:
    """The process's peak resident set since ``reset()`` (Linux); ``None`` where /proc cannot say."""

    def __init__(self) -> None:
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None


    def reset(self) -> float | None:
        """Free what can be freed, reset the high-water mark, return the resident set in MB."""
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")   # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
        except OSError:
            return None
        return status_mb("VmRSS")

    def peak(self) -> float | None:
        return status_mb("VmHWM")


def random_state(model: nn.Module, seed: int) -> None:
    """Non-trivial batch-norm statistics and head, so that comparing logits means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)


def networks(arch: str, seed: int) -> tuple[nn.Module, nn.Module | None]:
    """(our plain eval model, torchvision's with the same weights or None when it has no such arch)."""
    ours = build_model(arch, aux_logits=False, **({"init_weights": False} if arch == "inception_v3" else {}))
    random_state(ours, seed)
    ours.eval()
    if arch != "inception_v3":
        return ours, None
    import torchvision

    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                         transform_input=False).eval()
    tv.load_state_dict(ours.state_dict())
    return ours, tv


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def have(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


class PlainOnnx:
    """The plain (unfused) reference graph exported once, shared by ONNX Runtime and OpenVINO."""

    def __init__(self, model: nn.Module, image_size: int, folder: Path) -> None:
        self.model, self.image_size, self.path = model, image_size, folder / "plain.onnx"

    def get(self) -> Path:
        if not self.path.exists():
            x = torch.zeros(2, 3, self.image_size, self.image_size)
            t = time.perf_counter()
            export_onnx(self.model, x, self.path, output_name="logits")
            log.info("exported the plain graph to ONNX for the comparisons (%.1f s)", time.perf_counter() - t)
        return self.path


def _torchvision(plain: nn.Module, onnx: PlainOnnx, batch: int, threads: int) -> tuple[Runner, str]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return plain(x)
    return run, f"{type(plain).__module__}.{type(plain).__name__} eager fp32, NCHW"


def _onnxruntime(plain: nn.Module, onnx: PlainOnnx, batch: int, threads: int) -> tuple[Runner, str]:
    session = ort_session(onnx.get(), threads)
    version = importlib.metadata.version("onnxruntime")

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session(x.numpy()))
    return run, f"onnxruntime {version} CPU, plain graph export, all graph optimisations"


def _openvino(precision: str) -> Callable[[nn.Module, PlainOnnx, int, int], tuple[Runner, str]]:
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]

    def build(plain: nn.Module, onnx: PlainOnnx, batch: int, threads: int) -> tuple[Runner, str]:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(onnx.get()))
        model.reshape([batch, 3, onnx.image_size, onnx.image_size])
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "INFERENCE_NUM_THREADS": threads,
                                                     "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def run(x: torch.Tensor) -> torch.Tensor:
            request.infer({0: x.numpy()})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return run, f"openvino {ov.__version__} CPU, plain graph export, inference precision {hint}"
    return build


@dataclass(frozen=True)
class Comparison:
    flag: str          # the --compare value that asks for it
    name: str          # row name, and the ratio column
    package: str
    precision: str
    build: Callable[[nn.Module, PlainOnnx, int, int], tuple[Runner, str]]


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("torchvision", "torchvision eager fp32", "torchvision", "fp32", _torchvision),
    Comparison("onnxruntime", "onnxruntime fp32", "onnxruntime", "fp32", _onnxruntime),
    Comparison("openvino", "openvino fp32", "openvino", "fp32", _openvino("fp32")),
    Comparison("openvino", "openvino bf16", "openvino", "bf16", _openvino("bf16")),
)


def _load() -> float | None:
    """1-minute load average: how many other runnable processes shared the cores (noise, in one number)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def engine_pairs(cfg: BenchConfig, notes: list[str]) -> list[tuple[str, str]]:
    """(backend, precision) rows of our engine.

    An explicitly named backend that is not installed is an error (naming the pip command); a pair
    that does not exist or cannot run here is noted and skipped.
    """
    backends = cfg.backends
    if backends is None:
        backends = tuple(b for b in BACKENDS if b == "torch" or have(b))
    pairs = []
    for backend in backends:
        resolve_backend(backend, "fp32")
        for precision in cfg.precisions:
            try:
                resolve_precision(precision, "cpu", backend)
            except ValueError as e:
                notes.append(f"no row for {backend} {precision}: {e}")
                continue
            pairs.append((backend, precision))
    if not pairs:
        raise ValueError("nothing to measure: " + "; ".join(notes))
    return pairs


def decode_budget(cores: int) -> dict[str, int]:
    """What predict/features would use on this machine: decode workers + compute threads <= cores."""
    workers = default_workers()
    return {"cores": cores, "decode_workers": workers, "compute_threads": max(1, cores - workers)}


def run_bench(cfg: BenchConfig) -> dict:
    """Measure every requested row; returns the whole report as a JSON-ready dict."""
    check_config(cfg)
    previous_threads = torch.get_num_threads()
    threads = cfg.threads or available_cores()
    torch.set_num_threads(threads)
    notes: list[str] = []
    load_start = _load()
    try:
        pairs = engine_pairs(cfg, notes)
        ours, tv = networks(cfg.arch, cfg.seed)
        plain = tv if tv is not None else ours
        flops = 2 * summarize(ours, cfg.image_size).macs
        peak = matmul_peak(("fp32", "bf16", "int8"))

        g = torch.Generator().manual_seed(cfg.seed + 1)
        check = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=g)
        with torch.inference_mode():
            ref_check = plain(check)
            agree = _relative(ours(check), ref_check) if tv is not None else None
        if agree is not None and agree > AGREE_TOL:
            raise RuntimeError(f"our {cfg.arch} and torchvision's disagree on the same weights "
                               f"(max relative logit difference {agree:.2e} > {AGREE_TOL:g})")

        comparisons: list[Comparison] = []
        if tv is None and "torchvision" in cfg.compare:
            notes.append(f"torchvision has no {cfg.arch}: its row is skipped; "
                         "the others export our plain model")
        for c in COMPARISONS:
            if c.flag not in cfg.compare or (c.flag == "torchvision" and tv is None):
                continue
            if not have(c.package):
                note = f"{c.package} is not installed (pip install {c.package}): '{c.name}' skipped"
                if note not in notes:
                    notes.append(note)
                continue
            if c.precision == "bf16" and not native_bf16():
                notes.append(f"'{c.name}' skipped: no native bf16 on this CPU")
                continue
            comparisons.append(c)

        calibration = None
        if any(p == "int8" for _, p in pairs):
            n = max(CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES)
            calibration = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=g)
        memory = PeakRSS()
        rows: list[Row] = []
        with tempfile.TemporaryDirectory(prefix="inceptionv3_bench_") as tmp:
            onnx = PlainOnnx(plain, cfg.image_size, Path(tmp))
            # One runtime family at a time, torch first: the thread pools of ONNX Runtime and OpenVINO
            # keep spinning after a call, and torch's OpenMP threads, alternated with them on few cores,
            # wait for the CPU at every barrier: a torch call right after an ONNX Runtime call runs much
            # slower than alone.
            for family in FAMILIES:
                for batch in cfg.batch_sizes:
                    rows += _bench_batch(cfg, batch, family, ours, plain, onnx, comparisons, pairs,
                                         calibration, threads, memory)
        order = [c.name for c in comparisons] + [f"inceptionv3 {b} {p}" for b, p in pairs]
        rows.sort(key=lambda r: (cfg.batch_sizes.index(r.batch_size), order.index(r.name)))
        # The probe again at the end: the best of both readings is the machine's peak, whatever the
        # neighbours were doing at either moment.
        for p, again in matmul_peak(("fp32", "bf16", "int8")).items():
            if again["gflops"] and (peak[p]["gflops"] or 0) < again["gflops"]:
                peak[p] = again
        for r in rows:
            r.gflops = r.img_per_s * flops / 1e9
            probe = peak[r.precision]["gflops"]
            r.pct_peak = 100 * r.gflops / probe if probe else math.nan
            for c in rows:
                if c.reference and c.batch_size == r.batch_size:
                    r.ratios[c.name] = r.img_per_s / c.img_per_s
        return {
            "config": asdict(cfg), "threads": threads, "cpu": cpu_info(), "versions": versions(),
            "decode_budget": decode_budget(available_cores()), "flops_per_image": flops,
            "peak": peak, "logits_vs_torchvision": agree, "notes": notes,
            "load_average": {"start": load_start, "end": _load()},
            "rows": [asdict(r) for r in rows],
        }
    finally:
        torch.set_num_threads(previous_threads)


def _family(backend: str) -> str:
    return "torch" if backend in ("torch", "torchvision") else backend


def _bench_batch(cfg: BenchConfig, batch: int, family: str, ours: nn.Module, plain: nn.Module,
                 onnx: PlainOnnx,
                 comparisons: Sequence[Comparison], pairs: Sequence[tuple[str, str]],
                 calibration: torch.Tensor | None, threads: int, memory: PeakRSS) -> list[Row]:
    """Build and warm up the runtimes of one family at one batch size, then time them in alternation."""
    comparisons = [c for c in comparisons if _family(c.flag) == family]
    pairs = [(b, p) for b, p in pairs if _family(b) == family]
    if not comparisons and not pairs:
        return []
    g = torch.Generator().manual_seed(cfg.seed + 100 + batch)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    with torch.inference_mode():
        ref = plain(x)
    # Comparisons first: the reference row heads each batch in the table.
    todo: list[tuple[Row, Callable[[], tuple[Runner, str]]]] = []
    for c in comparisons:
        todo.append((Row(c.name, batch, c.flag, c.precision, True),
                     lambda c=c: c.build(plain, onnx, batch, threads)))
    for backend, precision in pairs:
        def ours_engine(backend=backend, precision=precision) -> tuple[Runner, str]:
            e = build_engine(ours, output="logits", precision=precision, backend=backend, device="cpu",
                             calibration=calibration if precision == "int8" else None, batch_size=batch)
            return e, e.describe()
        todo.append((Row(f"inceptionv3 {backend} {precision}", batch, backend, precision, False),
                     ours_engine))
    if family != "torch" and comparisons:
        onnx.get()   # export outside any row's memory window

    runners: list[tuple[Row, Runner]] = []
    for row, build in todo:
        log.info("batch %d: building %s", batch, row.name)
        base = memory.reset()
        t = time.perf_counter()
        run, row.describe = build()
        out = run(x)
        row.ready_s = time.perf_counter() - t
        if hasattr(run, "describe"):   # an engine knows its build time only after its first call
            row.describe = run.describe()
        row.rel_diff = _relative(out, ref)
        del out
        memory.reset()   # drop the build's transients (exports, calibration); keep the earlier baseline
        for _ in range(max(1, cfg.warmup)):
            run(x)
        top = memory.peak()
        row.peak_rss_mb = top - base if top is not None and base is not None else None
        runners.append((row, run))

    calls = batch1_calls(cfg.repeats, cfg.latency_repeats) if batch == 1 else cfg.repeats
    log.info("batch %d: timing %d %s runtimes x %d calls, in alternation", batch, len(runners), family, calls)
    for _ in range(calls):
        for row, run in runners:
            t = time.perf_counter()
            run(x)
            row.times_ms.append(1000 * (time.perf_counter() - t))
    rows = [row for row, _ in runners]
    runners.clear()   # free the sessions (and their threads) before the next family
    run = None
    for row in rows:
        row.ms_per_batch = statistics.median(row.times_ms)
        row.img_per_s = 1000 * batch / row.ms_per_batch
        row.p50_ms, row.p99_ms = _percentile(row.times_ms, 50), _percentile(row.times_ms, 99)
    return rows


def batch1_calls(repeats: int, latency_repeats: int | None) -> int:
    """Timed calls at batch 1: ``--latency-repeats`` where given, else ``--repeats`` as for every batch."""
    return repeats if latency_repeats is None else latency_repeats


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_report(result: dict) -> str:
    """The header (machine, versions, peak, budget, notes) and one table line per row."""
    cfg, cpu, ver, budget = result["config"], result["cpu"], result["versions"], result["decode_budget"]
    peak = result["peak"]
    probe = ", ".join(f"{p} {_num(v['gflops'], '.0f')}" for p, v in peak.items())
    agree = result["logits_vs_torchvision"]
    lines = [
        (f"inceptionv3 bench: {cfg['arch']}, {cfg['image_size']} px, "
         f"{result['flops_per_image'] / 1e9:.2f} GFLOP per image; median of {cfg['repeats']} calls "
         f"(batch 1: {batch1_calls(cfg['repeats'], cfg.get('latency_repeats'))}) "
         f"after {cfg['warmup']} warm-up, runtimes alternated"),
        "versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in ver.items()),
        f"cpu: {cpu['model']}, {cpu['cores']} cores; flags: {' '.join(cpu['flags']) or 'none of note'}",
        (f"threads: {result['threads']} compute; predict/features budget: {budget['decode_workers']} decode "
         f"workers + {budget['compute_threads']} compute threads on {budget['cores']} cores"),
        f"peak (large matmul in this process, GFLOP/s; int8 GOP/s): {probe}",
    ]
    load = result.get("load_average", {})
    if load.get("start") is not None:
        lines.append(f"load average (1 min): {load['start']:.1f} at start, {load['end']:.1f} at end, "
                     f"on {cpu['cores']} cores")
    if agree is not None:
        lines.append(f"logits: ours vs torchvision, same weights: max relative difference {agree:.1e}")
    lines += [f"note: {n}" for n in result["notes"]]
    refs = list(dict.fromkeys(r["name"] for r in result["rows"] if r["reference"]))
    head = (f"{'batch':>5}  {'runtime':<26}{'img/s':>8}{'ms/batch':>10}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'GFLOP/s':>9}{'%peak':>7}{'mem MB':>8}{'rel diff':>10}" + "".join(f"  x {n}" for n in refs))
    lines += ["", head]
    for r in result["rows"]:
        ratios = "".join(f"  {_num(r['ratios'].get(n), '.2f'):>{len(n) + 2}}" for n in refs)
        lines.append(
            f"{r['batch_size']:>5}  {r['name']:<26}{r['img_per_s']:>8.1f}{r['ms_per_batch']:>10.1f}"
            f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['gflops']:>9.0f}{_num(r['pct_peak'], '.0f'):>7}"
            f"{_num(r['peak_rss_mb'], '.0f'):>8}{r['rel_diff']:>10.1e}{ratios}")
    lines += ["", "engines:"] + [f"  {r['name']} (batch {r['batch_size']}): {r['describe']}"
                                 for r in result["rows"] if not r["reference"]]
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """The whole report, atomically (NaN written as null)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return write_text_atomic(path, json.dumps(clean(result), indent=2) + "\n")
