"""The one ONNX exporter: what ``inceptionv3 export`` writes, what the engine hands ONNX Runtime and OpenVINO,
and what the benchmark's comparisons run.

torch.onnx's dynamo exporter at ``OPSET``, batch axis dynamic, spatial size fixed by the example input.
onnx and onnxscript are imported when an export runs, so the engine loads without them.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

OPSET = 18           # >= 17 (LayerNorm-era ops); 18 is what torch.onnx's dynamo exporter targets natively
MAX_BATCH = 4096     # the dynamic batch axis' upper bound the exporter records


def require_onnx() -> None:
    """ImportError naming the install command when onnx or onnxscript is missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): "
                          f"pip install 'inceptionv3[export]'") from None


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
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(module, (example.float().contiguous(),), dynamo=True, opset_version=OPSET,
                                    input_names=["input"], output_names=[output_name],
                                    dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False)
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(out))
