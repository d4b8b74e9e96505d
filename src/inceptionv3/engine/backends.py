"""The runtimes behind the exported engines: ONNX Runtime and OpenVINO sessions, and int8 quantization.

Each takes an ONNX file (see ``onnx.export_onnx``) and returns ``run(x: ndarray) -> ndarray``. The
runtimes' packages are imported when a session is made, so the torch engine loads without them.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def quantize_int8(fp32_path: Path, out: Path, calibration: torch.Tensor) -> None:
    """Static post-training quantization: int8 weights per channel, uint8 activations, QDQ format."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.float().split(16))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": np.ascontiguousarray(batch.numpy())}

    # Shape inference and graph clean-up first, as ONNX Runtime's quantizer expects; a temp file beside
    # ``out`` so a crash leaves nothing under a cache name.
    prepared = out.with_name(out.name + ".prep.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def ort_session(path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX Runtime on the CPU, every graph optimisation on, ``threads`` intra-op threads (default: torch's
    budget, as ``runtime.threads.set_compute_threads`` set it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


_OPENVINO_KEEP = 8
# Compiled OpenVINO models, shared by the engines of this process: a second `features` or `evaluate`
# call on the same weights, or the last partial batch of a folder, does not compile again.
# Engines run one call at a time per process, so sharing a request is safe; the oldest are dropped.
_OPENVINO_COMPILED: dict[tuple, object] = {}


def openvino_session(path: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO on static shapes, the batch split over one stream per compute thread.

    A model compiled for a fixed batch ran faster than the same model with a dynamic batch axis, and
    one single-threaded stream per thread, each taking a share of the batch, faster than one stream of
    all threads (docs/performance.md). A batch that does not split evenly is padded with zeros to equal
    parts (at most streams - 1 extra images); one compiled model per part size is kept.
    """
    import openvino as ov

    core = ov.Core()
    threads = torch.get_num_threads()
    # int8: the QDQ graph's quantized convs run int8; OpenVINO picks the precision of the rest (bf16 on AMX)
    hint = {"bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
            "fp32": {"INFERENCE_PRECISION_HINT": "f32"}}.get(precision, {})

    def request(shape: tuple[int, ...], streams: int):
        # one stream: a plain synchronous request (the queue's bookkeeping is measurable at batch 1)
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
