"""Fast inference engines: a fused graph, bf16 and int8 precision, and selectable runtimes.

``fuse_for_inference`` rewrites a trained model for inference only: batch norm folded into the convs,
and in every Mixed block the 1x1 convs that read the block input fused into one wider conv whose output
is split (Mixed_5b: 64 + 48 + 64 + 32 channels in one GEMM instead of four). The average-pool branch's
1x1 conv joins that GEMM too: a bias-free 1x1 conv commutes with a 3x3 average pool (both are linear
and a zero pad stays zero), so we pool its narrow output instead of the wide input, then add the bias
and the ReLU. The result equals the model within float rounding (tested at 1e-4 relative).

``build_engine`` wraps the model for one output (logits, pooled features or a tap) at one
precision on one backend:

| backend     | fp32                   | bf16                          | int8                                 |
|-------------|------------------------|-------------------------------|--------------------------------------|
| torch       | fused graph, oneDNN    | bf16 weights + activations    | -                                    |
| onnxruntime | BN-folded graph        | -                             | static QDQ of the pools-moved graph  |
| openvino    | BN folded, pools moved | inference hint bf16           | static QDQ of the BN-folded graph    |

ONNX Runtime and OpenVINO get the BN-folded graph without the sibling fusion, which slowed both; "pools
moved": each 3x3 average pool runs after its branch's 1x1 conv, where that was faster and agreed (see
``build_engine``). int8 is quantized by ONNX Runtime's static quantizer (per-channel weights, calibrated;
so OpenVINO int8 needs onnxruntime installed too).

Exported graphs are cached under ``$INCEPTIONV3_HOME/cache/engines`` keyed by a digest of the weights,
input shape, output, precision and calibration images, so the export cost is paid once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import TAPS, BasicConv2d, InceptionA, InceptionC, InceptionD, InceptionE, InceptionModule

__all__ = ["PRECISIONS", "BACKENDS", "MIN_CALIBRATION_IMAGES", "AUTO_EXPORT_MIN_IMAGES", "fuse_for_inference",
           "native_bf16", "resolve_precision", "resolve_backend", "build_engine", "Engine"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime", "openvino")
MIN_CALIBRATION_IMAGES = 32    # fewer leaves activation ranges to chance (one odd image sets a whole scale)
AUTO_EXPORT_MIN_IMAGES = 256   # backend "auto" exports to OpenVINO/ONNX Runtime from this many images on

# Which (backend, precision) pairs exist; the pip command that brings each backend.
_SUPPORTED = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
_PACKAGES = {"onnxruntime": ("onnxruntime", "pip install 'inceptionv3[export]'"),   # (runtime, install)
             "openvino": ("openvino", "pip install 'inceptionv3[openvino]'")}
# Outputs every backend computes; the other taps run on the torch backend only.
EXPORTED_OUTPUTS = ("logits", "pool")


# ----------------------------------------------------------------------------------------------------
# The fused graph


class _Siblings(nn.Module):
    """Several 1x1 convs on the same input as one conv; returns the branch outputs, split.

    ``pooled`` trailing channels belong to an average-pool branch: they are computed without bias,
    pooled, then biased (and ReLU'd), which equals conv(avg_pool(x)) exactly in both pad modes.
    """

    def __init__(self, convs: Sequence[nn.Conv2d], relu: bool, pool_conv: nn.Conv2d | None = None,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self.sizes = [c.out_channels for c in convs]
        weights = [c.weight for c in convs]
        biases = [c.bias if c.bias is not None else torch.zeros(c.out_channels) for c in convs]
        self.pooled = 0
        if pool_conv is not None:
            self.pooled = pool_conv.out_channels
            weights.append(pool_conv.weight)
            biases.append(torch.zeros(self.pooled))
            pool_bias = pool_conv.bias if pool_conv.bias is not None else torch.zeros(self.pooled)
            self.register_buffer("pool_bias", pool_bias.detach().clone().view(1, -1, 1, 1))
        w = torch.cat([t.detach() for t in weights], 0)
        self.conv = nn.Conv2d(w.shape[1], w.shape[0], kernel_size=1, bias=True).requires_grad_(False)
        self.conv.weight.copy_(w)
        self.conv.bias.copy_(torch.cat([t.detach() for t in biases], 0))
        self.relu = relu
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.conv(x)
        if not self.pooled:
            return list(torch.split(F.relu(y) if self.relu else y, self.sizes, 1))
        head, pool = y[:, :-self.pooled], y[:, -self.pooled:]
        pool = F.avg_pool2d(pool, 3, stride=1, padding=1, count_include_pad=self.count_include_pad)
        pool = pool + self.pool_bias
        parts = list(torch.split(F.relu(head) if self.relu else head, self.sizes, 1))
        return parts + [F.relu(pool) if self.relu else pool]


class _Fork(nn.Module):
    """E blocks' parallel 1x3 | 3x1 pair on one input, concatenated."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class _FusedBlock(nn.Module):
    """A Mixed block rewritten as: fused siblings -> one tail per branch -> (extra pool branch) -> concat."""

    def __init__(self, siblings: _Siblings, tails: Sequence[nn.Module], extra: Callable | None = None) -> None:
        super().__init__()
        self.siblings = siblings
        self.tails = nn.ModuleList(tails)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.siblings(x)
        out = [tail(p) for tail, p in zip(self.tails, parts)] + parts[len(self.tails):]
        if self.extra is not None:
            out.append(self.extra(x))
        return torch.cat(out, 1)


class _MaxPoolBranch(nn.Module):
    """max-pool then conv: the pool branch that cannot join the siblings (a max is not linear)."""

    def __init__(self, conv: nn.Module, stride: int, padding: int) -> None:
        super().__init__()
        self.conv, self.stride, self.padding = conv, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=self.padding)
        return self.conv(x) if self.conv is not None else x


class _PooledConv(nn.Module):
    """An average-pool branch as conv -> pool -> bias -> ReLU: the 3x3 pool runs on the conv's narrow output
    (Mixed_7c: 192 channels instead of 2048); exact, as in ``_Siblings``."""

    def __init__(self, conv: nn.Conv2d, count_include_pad: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False).requires_grad_(False)
        self.conv.weight.copy_(conv.weight.detach())
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.detach().clone().view(1, -1, 1, 1))
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(self.conv(x), 3, stride=1, padding=1, count_include_pad=self.count_include_pad)
        return F.relu(y + self.bias)


class _Branches(nn.Module):
    """The convs that read a block's input, each on its own, and the pooled-after-conv branch."""

    def __init__(self, convs: Sequence[nn.Module], pooled: _PooledConv) -> None:
        super().__init__()
        self.convs, self.pooled = nn.ModuleList(convs), pooled

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [conv(x) for conv in self.convs] + [self.pooled(x)]


def _conv(m: nn.Module) -> nn.Conv2d:
    return m.conv if isinstance(m, BasicConv2d) else m


def _heads(convs: Sequence[nn.Module], pool: nn.Module | None, count_include_pad: bool, merge: bool) -> nn.Module:
    """A block's first convs: merged into one (``merge``) or kept apart; the avg-pool branch pooled after."""
    if merge:
        return _Siblings([_conv(c) for c in convs], True, _conv(pool) if pool is not None else None,
                         count_include_pad)
    return _Branches(convs, _PooledConv(_conv(pool), count_include_pad))


def _fuse_block(block: nn.Module, merge: bool = True) -> nn.Module:
    """One Mixed block rewritten (see the module docstring). ``merge=False`` only moves the average pool
    after its branch's 1x1 conv; blocks without an average-pool branch are then returned as they are."""
    seq = nn.Sequential
    if isinstance(block, InceptionA):
        heads = _heads([block.branch1x1, block.branch5x5_1, block.branch3x3dbl_1], block.branch_pool,
                       block.count_include_pad, merge)
        return _FusedBlock(heads, [nn.Identity(), block.branch5x5_2, seq(block.branch3x3dbl_2, block.branch3x3dbl_3)])
    if isinstance(block, InceptionC):
        heads = _heads([block.branch1x1, block.branch7x7_1, block.branch7x7dbl_1], block.branch_pool,
                       block.count_include_pad, merge)
        return _FusedBlock(heads, [nn.Identity(), seq(block.branch7x7_2, block.branch7x7_3),
                                   seq(block.branch7x7dbl_2, block.branch7x7dbl_3, block.branch7x7dbl_4,
                                       block.branch7x7dbl_5)])
    if isinstance(block, InceptionE) and (merge or not block.max_pool):
        convs = [block.branch1x1, block.branch3x3_1, block.branch3x3dbl_1]
        tails = [nn.Identity(), _Fork(block.branch3x3_2a, block.branch3x3_2b),
                 seq(block.branch3x3dbl_2, _Fork(block.branch3x3dbl_3a, block.branch3x3dbl_3b))]
        if block.max_pool:   # the FID graph's last block
            return _FusedBlock(_heads(convs, None, True, True), tails, _MaxPoolBranch(block.branch_pool, 1, 1))
        return _FusedBlock(_heads(convs, block.branch_pool, block.count_include_pad, merge), tails)
    if not merge:
        return block
    if isinstance(block, InceptionD):
        sib = _Siblings([_conv(block.branch3x3_1), _conv(block.branch7x7x3_1)], True)
        return _FusedBlock(sib, [block.branch3x3_2, seq(block.branch7x7x3_2, block.branch7x7x3_3,
                                                        block.branch7x7x3_4)],
                           _MaxPoolBranch(None, stride=2, padding=0))
    if isinstance(block, InceptionModule):   # inception_mini: purely linear branches, no ReLU
        sib = _Siblings([block.branch1, block.branch2[0], block.branch3[0]], False)
        return _FusedBlock(sib, [nn.Identity(), block.branch2[1], block.branch3[1]],
                           _MaxPoolBranch(block.branch4[1], stride=1, padding=1))
    return block


@torch.no_grad()
def fuse_for_inference(model: nn.Module, siblings: bool = True, pool_after_conv: bool = True) -> nn.Module:
    """An eval-mode, channels-last copy with batch norm folded and (``siblings``) sibling 1x1 convs fused.

    Without ``siblings``, ``pool_after_conv`` still moves each 3x3 average pool after its branch's 1x1
    conv; fused siblings always do.

    The copy keeps the forward contract (``forward``, ``forward_features``, ``forward_head``,
    ``forward_intermediates``), so any code that runs the model runs the copy; only its state-dict keys
    differ. Works for every arch in ``model.ARCHS``. The caller's model is untouched.
    """
    from .inference import fold_batch_norm

    fused = copy.deepcopy(model).eval().requires_grad_(False)
    if getattr(fused, "AuxLogits", None) is not None:
        fused.AuxLogits = None      # inference never reads the aux head
    fold_batch_norm(fused)
    if siblings or pool_after_conv:
        for name, child in list(fused.named_children()):
            setattr(fused, name, _fuse_block(child, merge=siblings))
    return fused.to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------------
# Choosing precision and backend


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
    import importlib.util
    # the runtime, plus what exports our graph to it
    return all(importlib.util.find_spec(p) is not None for p in (_PACKAGES[backend][0], "onnx", "onnxscript"))


def resolve_precision(precision: str, device: str | torch.device = "cpu", backend: str = "torch") -> str:
    """'auto' -> 'bf16' where it runs natively (and the backend has it), else 'fp32'.

    An explicit choice that cannot run here raises ValueError naming the nearest one that can; there is
    no silent fallback, since that would change results.
    """
    if precision not in ("auto",) + PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    have = _SUPPORTED.get(backend, ())
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
        # fastest first on the CPUs measured (README, Benchmarks)
        others = [b for b in ("openvino", "torch", "onnxruntime") if precision in _SUPPORTED[b] and _installed(b)
                  and not (b == "openvino" and precision == "int8" and not _installed("onnxruntime"))]
        hint = (f"use --backend {others[0]} for {precision}" if others
                else f"use --precision {have[0]} with --backend {backend}")
        raise ValueError(f"precision {precision} is not available on the {backend} backend; {hint}")
    return precision


def resolve_backend(backend: str, precision: str = "fp32", device: str | torch.device = "cpu",
                    output: str = "logits", images: int | None = None) -> str:
    """'auto' -> the fastest installed backend for this precision and output (measured; see README).

    int8 runs on OpenVINO where it and ONNX Runtime (its quantizer) are installed: 3-4x faster than
    ONNX Runtime's int8 kernels here; else on ONNX Runtime. fp32 and bf16 run on OpenVINO (then ONNX
    Runtime, fp32 only) when the job has at least ``AUTO_EXPORT_MIN_IMAGES`` images: they beat
    oneDNN-in-torch here, and far more so when another process shares the cores, but the first run pays
    a one-time export (5-10 s at 299 px on a quiet machine, more under load).
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
            return next((b for b in ("openvino", "onnxruntime") if _installed(b) and precision in _SUPPORTED[b]),
                        "torch")
        else:
            return "torch"
    if not _installed(backend):
        package, cmd = _PACKAGES[backend]
        nearest = next((b for b in BACKENDS if _installed(b) and precision in _SUPPORTED[b]), "torch")
        raise ValueError(f"backend {backend} needs the {package} package: {cmd}; "
                         f"or use --backend {nearest}")
    if backend == "openvino" and precision == "int8" and not _installed("onnxruntime"):
        raise ValueError("int8 on OpenVINO is quantized with ONNX Runtime's quantizer: "
                         f"{_PACKAGES['onnxruntime'][1]}; or use --precision bf16 --backend openvino")
    if backend != "torch" and dev.type != "cpu":
        raise ValueError(f"backend {backend} runs on the CPU here; use --device cpu or --backend torch")
    if backend != "torch" and output not in EXPORTED_OUTPUTS:
        raise ValueError(f"output {output!r} is computed by the torch backend only "
                         f"({backend} runs {' and '.join(EXPORTED_OUTPUTS)}); use --backend torch")
    return backend


# ----------------------------------------------------------------------------------------------------
# Engines


class _Head(nn.Module):
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
        self.head = _Head(module, output).eval()
        self.calibration = calibration
        self._sessions: dict[tuple[int, int, int], Callable[[np.ndarray], np.ndarray]] = {}
        self.build_seconds = 0.0
        self.cache_files: list[Path] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"engine input must be N x C x H x W, got shape {tuple(images.shape)}")
        if self.backend == "torch":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            x = images.to(self.device, dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return self.head(x).float().cpu()
        run = self._session(tuple(images.shape[1:]))
        x = np.ascontiguousarray(images.detach().cpu().float().numpy())
        return torch.from_numpy(run(x)).float()

    def apply(self, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """``fn(fused_module, images)`` at the engine's precision (torch backend only), as float32 on CPU."""
        if self.backend != "torch":
            raise ValueError(f"a custom function runs on the torch backend only, not {self.backend}")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        x = images.to(self.device, dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return fn(self.module, x).float().cpu()

    def describe(self) -> str:
        arch = getattr(self.module, "arch", type(self.module).__name__)
        extra = f", built in {self.build_seconds:.1f} s" if self.build_seconds else ""
        pools = any(isinstance(m, _PooledConv) for m in self.module.modules())
        graph = ("fused BN + sibling 1x1 convs, channels-last" if self.backend == "torch" else
                 "BN folded" + (", avg pools after 1x1 convs" if pools else "")
                 + (", static shapes, one stream per thread" if self.backend == "openvino" else ""))
        return f"{arch} {self.output} | {self.backend} {self.precision} on {self.device} | {graph}{extra}"

    # -- exported backends ---------------------------------------------------------------------------

    def _session(self, shape: tuple[int, int, int]) -> Callable[[np.ndarray], np.ndarray]:
        """One runtime session per input shape (spatial size fixed, batch dynamic), built on first use."""
        if shape not in self._sessions:
            t0 = time.perf_counter()
            path = self._exported(shape)
            self._sessions[shape] = (_ort_session(path) if self.backend == "onnxruntime"
                                     else _openvino_session(path, self.precision))
            self.build_seconds += time.perf_counter() - t0
        return self._sessions[shape]

    def _exported(self, shape: tuple[int, int, int]) -> Path:
        """The ONNX file for this shape, precision and output: from the cache, or exported once."""
        from .fileio import atomic_path
        from .weights import cache_dir

        key = _digest(self.module, shape, self.output, self.precision, self.calibration)
        fp32_path = cache_dir() / "cache" / "engines" / f"{key['fp32']}.onnx"
        if not fp32_path.exists():
            log.info("exporting the fused graph for %s (once; cached at %s)", "x".join(map(str, shape)), fp32_path)
            with atomic_path(fp32_path) as tmp:
                _export_onnx(self.head, shape, tmp)
        self.cache_files = [fp32_path]
        if self.precision != "int8":
            return fp32_path
        int8_path = fp32_path.with_name(f"{key['int8']}.int8.onnx")
        if not int8_path.exists():
            if self.calibration is None or self.calibration.shape[1:] != shape:
                got = "none" if self.calibration is None else "x".join(map(str, self.calibration.shape[1:]))
                raise ValueError(f"int8 needs calibration images of shape {'x'.join(map(str, shape))} "
                                 f"(got {got}); pass calibration= / --calibration DIR")
            log.info("quantizing to int8 with %d calibration images (once; cached at %s)",
                     len(self.calibration), int8_path)
            with atomic_path(int8_path) as tmp:
                _quantize_int8(fp32_path, tmp, self.calibration)
        self.cache_files.append(int8_path)
        return int8_path


def _digest(module: nn.Module, shape: tuple[int, int, int], output: str, precision: str,
            calibration: torch.Tensor | None) -> dict[str, str]:
    """Cache keys: the fp32 graph (weights, shape, output, exporter) and the int8 one (+ calibration)."""
    from .weights import state_dict_digest

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


def _export_onnx(head: nn.Module, shape: tuple[int, int, int], out: Path) -> None:
    import onnx

    from .export import OPSET, _quiet

    # Exported from a contiguous fp32 copy: ONNX has no memory formats, the runtime picks its own layout.
    head = copy.deepcopy(head).float().to(memory_format=torch.contiguous_format)
    x = torch.randn(2, *shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(head, (x,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                    output_names=["output"], dynamic_shapes={"x": {0: batch}},
                                    external_data=False, verbose=False)
    onnx.save_model(program.model_proto, str(out))


def _quantize_int8(fp32_path: Path, out: Path, calibration: torch.Tensor) -> None:
    """Static post-training quantization: int8 weights per channel, uint8 activations, QDQ format."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.float().split(16))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": np.ascontiguousarray(batch.numpy())}

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Shape inference and graph clean-up first, as ONNX Runtime's quantizer expects; a temp file beside
    # ``out`` so a crash leaves nothing under a cache name.
    prepared = out.with_name(out.name + ".prep.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def _ort_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()   # the budget runtime.set_compute_threads set
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


# Compiled OpenVINO models, shared by the engines of this process: a second `features` or `evaluate`
# call on the same weights, or the last partial batch of a folder, does not compile again (0.3-1 s each).
# Engines run one call at a time per process, so sharing a request is safe; the oldest are dropped.
_OPENVINO_COMPILED: dict[tuple, object] = {}
_OPENVINO_KEEP = 8


def _openvino_session(path: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO on static shapes, the batch split over one stream per compute thread.

    A model compiled for a fixed batch ran 4-6% faster than the same model with a dynamic batch axis,
    and two streams of one thread each, each taking half the batch, 7-8% faster than one stream of two
    threads (batch 16, 299 px, fp32 and bf16). A batch that does not split evenly is padded with zeros
    to equal parts (at most streams - 1 extra images); one compiled model per part size is kept.
    """
    import openvino as ov

    core = ov.Core()
    threads = torch.get_num_threads()
    # int8: the QDQ graph's quantized convs run int8; OpenVINO picks the precision of the rest (bf16 on AMX)
    hint = {"bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
            "fp32": {"INFERENCE_PRECISION_HINT": "f32"}}.get(precision, {})
    def request(shape: tuple[int, ...], streams: int):
        # one stream: a plain synchronous request (the queue's bookkeeping cost 3% at batch 1)
        key = (str(path), shape, streams, threads, precision)
        if key not in _OPENVINO_COMPILED:
            model = core.read_model(str(path))
            model.reshape(list(shape))
            config = {"INFERENCE_NUM_THREADS": threads, **hint}
            config.update({"NUM_STREAMS": streams} if streams > 1 else {"PERFORMANCE_HINT": "LATENCY"})
            exe = core.compile_model(model, "CPU", config)
            while len(_OPENVINO_COMPILED) >= _OPENVINO_KEEP:
                _OPENVINO_COMPILED.pop(next(iter(_OPENVINO_COMPILED)))    # oldest first
            _OPENVINO_COMPILED[key] = ov.AsyncInferQueue(exe, streams) if streams > 1 else exe.create_infer_request()
        return _OPENVINO_COMPILED[key]

    def run(x: np.ndarray) -> np.ndarray:
        n = len(x)
        streams = max(1, min(threads, n))
        if streams == 1:
            req = request(x.shape, 1)
            req.infer({0: x})
            return np.array(req.get_output_tensor(0).data, copy=True)
        part = -(-n // streams)
        if part * streams != n:
            x = np.concatenate([x, np.zeros((part * streams - n, *x.shape[1:]), x.dtype)])
        q = request((part, *x.shape[1:]), streams)
        outs: list[np.ndarray | None] = [None] * streams

        def done(req, i: int) -> None:
            outs[i] = np.array(req.get_output_tensor(0).data, copy=True)

        q.set_callback(done)
        for i in range(streams):
            q.start_async({0: np.ascontiguousarray(x[i * part:(i + 1) * part])}, userdata=i)
        q.wait_all()
        return np.concatenate(outs)[:n]
    return run


def build_engine(model: nn.Module, *, output: str = "logits", precision: str = "fp32", backend: str = "torch",
                 device: str | torch.device = "cpu", calibration: torch.Tensor | None = None,
                 batch_size: int | None = None, images: int | None = None) -> Engine:
    """A fast inference engine for ``model``: fused graph, at ``precision``, on ``backend``.

    ``output``: "logits", "pool" (the pooled features), or any other tap in ``model.TAPS`` (spatial taps
    averaged over space; torch backend only). ``precision`` / ``backend`` accept "auto". int8 needs
    ``calibration``: at least ``MIN_CALIBRATION_IMAGES`` preprocessed images like the ones to classify.
    ``batch_size`` is a hint only (the batch axis is dynamic on every backend); ``images`` (how many the
    job will run) lets backend "auto" decide whether a one-time export pays off.
    """
    if output not in TAPS:
        raise ValueError(f"unknown output {output!r}; choose one of: {', '.join(TAPS)}")
    dev = torch.device(device) if not isinstance(device, str) or device != "auto" else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "auto":
        wanted = "bf16" if native_bf16(dev) else "fp32"
        backend = resolve_backend(backend, wanted, dev, output, images)
        precision = resolve_precision("auto", dev, backend)
    else:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
        backend = resolve_backend(backend, precision, dev, output, images)
        precision = resolve_precision(precision, dev, backend)
    if precision == "int8":
        if calibration is None:
            raise ValueError(f"int8 needs calibration images: pass at least {MIN_CALIBRATION_IMAGES} "
                             "images like the ones to classify (--calibration DIR)")
        if len(calibration) < MIN_CALIBRATION_IMAGES:
            raise ValueError(f"int8 calibration has {len(calibration)} images; at least "
                             f"{MIN_CALIBRATION_IMAGES} are needed (--calibration DIR with more images)")
        calibration = calibration.detach().float().cpu()
    t0 = time.perf_counter()
    # ONNX Runtime and OpenVINO fuse branches their own way; the merged 1x1 convs and the split after
    # them made both 4-10% slower at batch 16 (measured side by side), so they get the BN-folded graph,
    # with the average pools moved after their 1x1 convs where that was faster in paired runs and agreed
    # with fp32 (benchmarks/bench_moved_pools.py): OpenVINO fp32/bf16 +1-6%, ONNX Runtime int8 +7-38%.
    # ONNX Runtime fp32 lost 2-4% at batch 16 (it fuses a conv with its ReLU, not a pool + bias + ReLU);
    # OpenVINO's int8 kernels ran the moved pools' quantized graph wrongly (79% top-1 agreement on the
    # digits); both keep the plain graph.
    moved = (backend, precision) in {("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "int8")}
    fused = fuse_for_inference(model, siblings=backend == "torch", pool_after_conv=moved)
    if backend == "torch":
        fused = fused.to(dev, torch.bfloat16 if precision == "bf16" else torch.float32,
                         memory_format=torch.channels_last)
    else:
        fused = fused.cpu()
    engine = Engine(fused, output, precision, backend, dev, calibration)
    engine.build_seconds = time.perf_counter() - t0
    log.info("engine: %s", engine.describe())
    return engine
