"""The one ONNX exporter: what ``inceptionv3 export`` writes, what the engine hands ONNX Runtime and OpenVINO,
and what the benchmark's comparisons run.

torch.onnx's TorchScript-based exporter at ``OPSET`` (the dynamo exporter where torch no longer has it), batch
axis dynamic, spatial size fixed by the example input. onnx (and onnxscript for the dynamo exporter) are
imported when an export runs, so the engine loads without them.
"""
from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 18           # >= 17 (LayerNorm-era ops); 18 is what torch.onnx's dynamo exporter targets natively
MAX_BATCH = 4096     # the dynamic batch axis' upper bound the exporter records


def require_onnx(*extra: str) -> None:
    """ImportError naming the install command when onnx (or one of ``extra``, e.g. onnxscript) is missing."""
    import importlib

    for name in ("onnx", *extra):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImportError(f"ONNX export needs the {name} package: pip install 'inceptionv3[export]'") from None


@contextmanager
def quiet_exporter(names: tuple[str, ...] = ("onnxscript", "onnx_ir")) -> Iterator[None]:
    """The exporter logs every optimisation pass at INFO; keep the command line's INFO output readable."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: nn.Module, example: torch.Tensor, out: str | Path, *, output_name: str = "output",
                metadata: Mapping[str, str] | None = None) -> None:
    """Write ``module`` as a checked ONNX graph to ``out``: input "input" shaped like ``example`` (N x C x H x W)
    with N dynamic, one output ``output_name``, ``metadata`` as the model's metadata_props.

    Exported from a contiguous fp32 copy (ONNX has no memory formats; each runtime picks its own layout),
    so the caller's module is left as it was.
    """
    require_onnx()
    import onnx

    module = copy.deepcopy(module).float().to(memory_format=torch.contiguous_format).eval()
    example = example.float().contiguous()
    with torch.no_grad(), quiet_exporter():
        data = _torchscript_export(module, example, output_name)
        if data is None:
            data = _dynamo_export(module, example, output_name)
    if metadata:
        proto = onnx.load_model_from_string(data)
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        data = proto.SerializeToString()
    Path(out).write_bytes(data)
    onnx.checker.check_model(str(out))      # from the file: the checker's C++ reader, no second parse here


def _torchscript_export(module: nn.Module, example: torch.Tensor, output_name: str) -> bytes | None:
    """The serialized ONNX model from one trace of ``module``, or None where this torch has no TorchScript exporter.

    A trace is all this network needs (no data-dependent control flow), and it takes a second where the
    dynamo exporter's graph capture and decompositions take about ten (docs/performance.md), which is what
    decides whether a job of a hundred images can pay for its export. Both give the same graph to the
    runtimes: the same outputs, bit for bit, at the same speed.
    """
    import io

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # its deprecation notice and tracer notes are not the user's
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=[output_name],
                              dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}})
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        # a torch without the TorchScript route, or one that refuses it for this graph
        log.debug("TorchScript-based ONNX export unavailable (%s); using the dynamo exporter", e)
        return None
    return buffer.getvalue()


def _dynamo_export(module: nn.Module, example: torch.Tensor, output_name: str) -> bytes:
    """The serialized ONNX model from torch.export's graph capture, the batch axis a symbolic dim up to
    ``MAX_BATCH``."""
    require_onnx("onnxscript")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                output_names=[output_name], dynamic_shapes={"x": {0: batch}},
                                external_data=False, verbose=False)
    return program.model_proto.SerializeToString()
