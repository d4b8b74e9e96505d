"""``inceptionv3 export``: a model as ONNX, TorchScript or torch.export (.pt2)."""
from __future__ import annotations

import argparse

from ..engine.options import EXPORT_FORMATS
from .common import EXIT_OK

NAME = "export"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="export to ONNX, TorchScript or torch.export (.pt2)",
                       description="Export a model for another runtime; the batch axis is dynamic and the "
                                   "preprocessing and class names travel in the file's metadata.")
    p.add_argument("--weights", required=True, help="registry name or weights file")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="onnx (onnxruntime, OpenVINO, TensorRT), torchscript (.pt) or pt2 (torch.export)")
    p.add_argument("--out", required=True, help="output file (.onnx, .pt, .pt2)")
    p.add_argument("--input-size", type=int, default=None,
                   help="square input side the file accepts (default: the weights' input size; at least "
                        "75 for inception_v3, 27 for inception_mini)")
    p.add_argument("--check", action="store_true",
                   help="rerun the file (onnxruntime for ONNX) on photo-like images and compare with PyTorch "
                        "(max difference <= 1e-4 of the logits' scale); a file that fails is not written")
    return p


def run(args: argparse.Namespace) -> int:
    from ..tasks.export import check_target, export_model
    from ..weights.load import load_model
    check_target(args.out, args.format, args.input_size)   # before reading the weights
    model = load_model(args.weights, aux_logits=False)   # forward never uses the aux head
    r = export_model(model, args.out, args.format, input_size=args.input_size, check=args.check)
    shape = "x".join(map(str, r.input_shape[1:]))
    checked = f"; checked: max abs diff {r.max_abs_diff:.2g}" if r.max_abs_diff is not None else ""
    print(f"wrote {r.format} model to {r.path} (input N x {shape}, N dynamic{checked})")
    return EXIT_OK
