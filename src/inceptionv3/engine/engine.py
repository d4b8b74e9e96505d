"""The inference engine: one model, one output, one precision, one backend.

``build_engine`` wraps a model for one output (logits, pooled features or a tap) at one precision on one
backend:

| backend     | fp32                   | bf16                          | int8                                 |
|-------------|------------------------|-------------------------------|--------------------------------------|
| torch       | fused graph, oneDNN    | bf16 weights + activations    | -                                    |
| onnxruntime | BN-folded graph        | -                             | static QDQ of the pools-moved graph  |
| openvino    | BN folded, pools moved | inference hint bf16           | static QDQ of the BN-folded graph    |

The torch backend runs ``fuse.fuse_for_inference``'s graph (batch norm folded, sibling 1x1 convs merged).
ONNX Runtime and OpenVINO get the BN-folded graph without the sibling fusion, which slowed both; "pools
moved": each 3x3 average pool runs after its branch's 1x1 conv, where that was faster and agreed. int8 is
quantized by ONNX Runtime's static quantizer (per-channel weights, calibrated; so OpenVINO int8 needs
onnxruntime installed too).

Exported graphs are cached under ``$INCEPTIONV3_HOME/cache/engines`` keyed by a digest of the weights,
input shape, output, precision and calibration images, so the export cost is paid once; each file's sha256
is recorded beside it and checked before use, and a file that fails the check is built again.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.taps import TAPS
from ..runtime.distributed import env_from_environ
from ..runtime.files import atomic_path, write_text_atomic
from ..runtime.threads import resolve_device
from ..weights.cache import engines_dir
from ..weights.hub import sha256_file as file_sha256
from ..weights.io import state_dict_digest
from .backends import openvino_session, ort_session, quantize_int8
from .fuse import PooledConv, fuse_for_inference, has_batch_norm, has_fused_siblings
from .inputs import calibration_tensor
from .onnx import export_onnx
from .options import MIN_CALIBRATION_IMAGES, EngineOptions, engine_options
from .resolve import faster, resolve_engine, worth_timing

log = logging.getLogger(__name__)

# What a bare ``build_engine(model)`` runs: the torch engine in fp32 on the CPU.
DIRECT = EngineOptions(device="cpu", backend="torch")

# The (backend, precision) pairs that run each 3x3 average pool after its branch's 1x1 conv: where that
# was faster in paired runs and agreed with fp32 (benchmarks/bench_moved_pools.py). ONNX Runtime fp32
# fuses a conv with its ReLU but not a pool + bias + ReLU, and OpenVINO's int8 kernels ran the moved
# pools' quantized graph wrongly, so both keep the plain graph.
POOLS_MOVED = {("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "int8")}


# precision "auto" times bf16 against fp32 on the job's first batch, for jobs of at least
# PROBE_MIN_IMAGES images: a warm-up and a timed call of each on PROBE_IMAGES rows apiece, every call on
# rows of its own, and the winner's rows are kept as the batch's output. On a taken core the timing still
# costs a few dozen images' worth of work (the fp32 graph, its kernels' first use, four small calls), so it
# runs only where that is a few percent of the job. Below that the native-bf16 rule stands: under a
# one-core load bf16 inference beat fp32 at every size measured (docs/performance.md), and timing one
# image a call instead of two was too noisy to trust.
PROBE_IMAGES = 2
PROBE_MIN_IMAGES = 512


class Head(nn.Module):
    """The fused trunk with one output: logits, pooled features, or a tap averaged over space."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "logits":
            return self.model(x)
        if self.output == "pool":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        out = self.model.forward_intermediates(x, [self.output])[self.output]
        return out.mean(dim=(2, 3)) if out.dim() == 4 else out   # spatial taps averaged over space, as FID tools do


class Engine:
    """``engine(images) -> float32 CPU tensor`` for preprocessed N x C x H x W images.

    Attributes: ``precision``, ``backend``, ``output``, ``device``; ``module`` is the torch graph: fused
    for the torch backend, which runs it; BN-folded for the others, which run its ONNX export.
    ``describe()`` is one line for logs.
    """

    def __init__(self, module: nn.Module, output: str, precision: str, backend: str, device: torch.device,
                 calibration: torch.Tensor | None = None) -> None:
        self.module, self.output, self.precision, self.backend, self.device = \
            module, output, precision, backend, device
        self.head = Head(module, output).eval()
        self.calibration = calibration
        self._sessions: dict[tuple[int, int, int], Callable[[np.ndarray], np.ndarray]] = {}
        self.build_seconds = 0.0
        self.cache_files: list[Path] = []
        self.folded_bn = True      # build_engine says whether the network had batch norm to fold
        # precision "auto" on a shared multi-core CPU: the fp32 graph beside the bf16 one until the first
        # batch has timed both (``_choose_precision``); then only the faster is kept.
        self.fp32_alternative: nn.Module | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"engine input must be N x C x H x W, got shape {tuple(images.shape)}")
        if self.fp32_alternative is not None and len(images):
            return self._choose_precision(images)
        if self.backend == "torch":
            return self._run_torch(self.head, self.precision, images)
        run = self._session(tuple(images.shape[1:]))
        x = np.ascontiguousarray(images.detach().cpu().float().numpy())
        return torch.from_numpy(run(x)).float()

    def _run_torch(self, head: nn.Module, precision: str, images: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        x = images.to(self.device, dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return head(x).float().cpu()

    def _choose_precision(self, images: torch.Tensor) -> torch.Tensor:
        """Keep bf16 or switch to fp32, whichever runs this batch's first rows faster here and now, and
        return the batch's output, every row from the chosen graph.

        The timed calls take rows of their own (two chunks of ``PROBE_IMAGES`` rows per precision; fewer
        rows, reused, in a small batch), so the winner's results are the output for its rows and only the
        loser's rows run again. A row's result does not depend on the batch it runs in beyond rounding
        (the FID graph's fp32 features not at all), so the output is what the chosen precision gives the
        whole batch."""
        heads = {"bf16": self.head, "fp32": Head(self.fp32_alternative, self.output).eval()}
        self.fp32_alternative = None
        n = len(images)
        k = max(1, min(PROBE_IMAGES, n // 4))
        done: list[tuple[str, int, torch.Tensor]] = []

        def run(precision: str) -> None:
            start = min(len(done) * k, n - k)     # the next rows; a small batch reuses its last ones
            done.append((precision, start, self._run_torch(heads[precision], precision, images[start:start + k])))

        self.precision = faster(run, "bf16", "fp32", "precision", rounds=1)
        self.head = heads[self.precision]
        self.module = self.head.model
        kept = [(start, out) for precision, start, out in done if precision == self.precision]
        if not kept:
            return self._run_torch(self.head, self.precision, images)
        out = kept[0][1].new_empty((n, *kept[0][1].shape[1:]))
        covered = torch.zeros(n, dtype=torch.bool)
        for start, rows in kept:
            out[start:start + k] = rows
            covered[start:start + k] = True
        rest = (~covered).nonzero().flatten()
        if rest.numel():
            out[rest] = self._run_torch(self.head, self.precision, images[rest])
        return out

    def describe(self) -> str:
        arch = getattr(self.module, "arch", type(self.module).__name__)
        extra = f", built in {self.build_seconds:.1f} s" if self.build_seconds else ""
        pools = any(isinstance(m, PooledConv) for m in self.module.modules())
        siblings = has_fused_siblings(self.module)
        if self.backend == "torch":
            fused = [name for name, done in (("BN", self.folded_bn), ("sibling 1x1 convs", siblings)) if done]
            graph = ("fused " + " + ".join(fused) + ", " if fused else "") + "channels-last"
        else:
            graph = ", ".join([*(["BN folded"] if self.folded_bn else []),
                               *(["avg pools after 1x1 convs"] if pools else []),
                               *(["static shapes, one stream per thread"] if self.backend == "openvino" else [])]) \
                or "plain graph"
        return f"{arch} {self.output} | {self.backend} {self.precision} on {self.device} | {graph}{extra}"

    def _session(self, shape: tuple[int, int, int]) -> Callable[[np.ndarray], np.ndarray]:
        """One runtime session per input shape (spatial size fixed, batch dynamic), built on first use."""
        if shape not in self._sessions:
            t0 = time.perf_counter()
            path = self._exported(shape)
            self._sessions[shape] = (ort_session(path) if self.backend == "onnxruntime"
                                     else openvino_session(path, self.precision))
            self.build_seconds += time.perf_counter() - t0
        return self._sessions[shape]

    def _exported(self, shape: tuple[int, int, int]) -> Path:
        """The ONNX file for this shape, precision and output: from the cache, or exported once."""
        key = _digest(self.module, shape, self.output, self.precision, self.calibration)
        fp32_path = engines_dir() / f"{key['fp32']}.onnx"

        def export(tmp: Path) -> None:
            log.info("exporting the fused graph for %s (once; cached at %s)", "x".join(map(str, shape)), fp32_path)
            export_onnx(self.head, torch.randn(2, *shape), tmp)

        cached_file(fp32_path, export)
        self.cache_files = [fp32_path]
        if self.precision != "int8":
            return fp32_path
        int8_path = fp32_path.with_name(f"{key['int8']}.int8.onnx")

        def quantize(tmp: Path) -> None:
            if self.calibration is None or self.calibration.shape[1:] != shape:
                got = "none" if self.calibration is None else "x".join(map(str, self.calibration.shape[1:]))
                raise ValueError(f"int8 needs calibration images of shape {'x'.join(map(str, shape))} "
                                 f"(got {got}); pass calibration= / --calibration DIR")
            log.info("quantizing to int8 with %d calibration images (once; cached at %s)",
                     len(self.calibration), int8_path)
            quantize_int8(fp32_path, tmp, self.calibration)

        cached_file(int8_path, quantize)
        self.cache_files.append(int8_path)
        return int8_path


def cached_file(path: Path, make: Callable[[Path], None]) -> Path:
    """``path`` from the engine cache if it matches the digest recorded beside it (``PATH.sha256``), else
    made by ``make(tmp)`` and recorded. A file that fails the check (truncated, emptied, altered) is made
    again with a warning naming it, so a damaged cache never breaks a run and is never trusted.

    Builds of one file are serialised by a lock beside it, so concurrent runs export it once.
    """
    record = path.with_name(path.name + ".sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)      # released when the file closes, or the process dies
        if path.exists():
            try:
                want = record.read_text().strip()
            except OSError:
                want = None
            if want and want == file_sha256(path):
                return path
            log.warning("cached engine %s %s; building it again", path,
                        "has no recorded digest" if not want else "does not match its recorded digest "
                        "(truncated or altered)")
            record.unlink(missing_ok=True)
        with atomic_path(path) as tmp:
            make(tmp)
        write_text_atomic(record, file_sha256(path) + "\n")
    return path


def _digest(module: nn.Module, shape: tuple[int, int, int], output: str, precision: str,
            calibration: torch.Tensor | None) -> dict[str, str]:
    """Cache keys: the fp32 graph (weights, shape, output, exporter) and the int8 one (+ calibration)."""
    h = hashlib.sha256()
    h.update(json.dumps([getattr(module, "arch", ""), getattr(module, "config", {}), list(shape), output,
                         torch.__version__, 1]).encode())
    h.update(state_dict_digest(module).encode())
    keys = {"fp32": h.hexdigest()[:32]}
    if precision == "int8" and calibration is not None:
        h.update(np.ascontiguousarray(calibration.float().numpy()).tobytes())
        h.update(b"int8-qdq-per-channel-minmax")
    keys["int8"] = h.hexdigest()[:32]
    return keys


def build_engine(model: nn.Module, output: str = "logits", options: EngineOptions | None = None, *,
                 images: int | None = None, precision: str | None = None, backend: str | None = None,
                 device: str | torch.device | None = None, calibration: torch.Tensor | None = None,
                 batch_size: int | None = None) -> Engine:
    """A fast inference engine for ``model``: fused graph, at ``options.precision``, on ``options.backend``.

    ``output``: "logits", "pool" (the pooled features), or any other tap in ``TAPS`` (spatial taps
    averaged over space; torch backend only). ``options`` default to ``DIRECT`` (torch, fp32, CPU); the
    keywords replace single settings. Precision and backend may be "auto"; ``images`` (how many the job
    will run) lets backend "auto" decide whether a one-time export pays off. int8 needs
    ``options.calibration``: at least ``MIN_CALIBRATION_IMAGES`` images like the ones to classify,
    preprocessed (a tensor) or as files and folders, decoded here with the model's preprocessing.
    The batch axis is dynamic on every backend, so ``batch_size`` is a hint only.
    """
    if output not in TAPS:
        raise ValueError(f"unknown output {output!r}; choose one of: {', '.join(TAPS)}")
    options = engine_options(options or DIRECT, precision=precision, backend=backend, device=device,
                             calibration=calibration, batch_size=batch_size)
    dev = resolve_device(options.device)
    precision, backend = resolve_engine(options.precision, options.backend, dev, output, images)
    calibration = None
    if precision == "int8":
        calibration = calibration_tensor(model, options)
        if calibration is None:
            raise ValueError(f"int8 needs calibration images: pass at least {MIN_CALIBRATION_IMAGES} "
                             "images like the ones to classify (--calibration DIR)")
        if len(calibration) < MIN_CALIBRATION_IMAGES:
            raise ValueError(f"int8 calibration has {len(calibration)} images; at least "
                             f"{MIN_CALIBRATION_IMAGES} are needed (--calibration DIR with more images)")
        calibration = calibration.detach().float().cpu()
    t0 = time.perf_counter()
    # ONNX Runtime and OpenVINO fuse branches their own way: the merged 1x1 convs and the split after
    # them slowed both, so they get the BN-folded graph (see POOLS_MOVED for the average pools).
    fused = fuse_for_inference(model, siblings=backend == "torch",
                               pool_after_conv=(backend, precision) in POOLS_MOVED)
    # precision "auto" on a shared multi-core CPU keeps an fp32 copy of the fused graph until the first
    # batch has timed both (Engine._choose_precision); a copy costs a fraction of fusing again.
    timed = (options.precision == "auto" and backend == "torch" and precision == "bf16"
             and images is not None and images >= PROBE_MIN_IMAGES
             and worth_timing(dev, torch.get_num_threads(), env_from_environ().distributed))
    fp32_alternative = copy.deepcopy(fused).to(dev, torch.float32, memory_format=torch.channels_last) \
        if timed else None
    if backend == "torch":
        fused = fused.to(dev, torch.bfloat16 if precision == "bf16" else torch.float32,
                         memory_format=torch.channels_last)
    else:
        fused = fused.cpu()
    engine = Engine(fused, output, precision, backend, dev, calibration)
    engine.fp32_alternative = fp32_alternative
    engine.folded_bn = has_batch_norm(model)
    engine.build_seconds = time.perf_counter() - t0
    # Under torchrun every rank builds the same engine: one line (rank 0's) says what runs.
    log.log(logging.INFO if env_from_environ().is_main else logging.DEBUG, "engine: %s", engine.describe())
    return engine
