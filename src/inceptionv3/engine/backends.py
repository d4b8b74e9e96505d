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
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn


def export_onnx(head: nn.Module, shape: tuple[int, int, int], out: Path) -> None:
    import onnx

    from ..tasks.export import OPSET, _quiet

    # Exported from a contiguous fp32 copy: ONNX has no memory formats, the runtime picks its own layout.
    head = copy.deepcopy(head).float().to(memory_format=torch.contiguous_format)
    x = torch.randn(2, *shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(head, (x,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                    output_names=["output"], dynamic_shapes={"x": {0: batch}},
                                    external_data=False, verbose=False)
    onnx.save_model(program.model_proto, str(out))


def quantize_int8(fp32_path: Path, out: Path, calibration: torch.Tensor) -> None:
    """Static post-training quantization: int8 weights per channel, uint8 activations, QDQ format."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

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


def ort_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()   # the budget runtime.set_compute_threads set
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


_OPENVINO_KEEP = 8
# Compiled OpenVINO models, shared by the engines of this process: a second `features` or `evaluate`
# call on the same weights, or the last partial batch of a folder, does not compile again (0.3-1 s each).
# Engines run one call at a time per process, so sharing a request is safe; the oldest are dropped.
_OPENVINO_COMPILED: dict[tuple, object] = {}


def openvino_session(path: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
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
