"""Top-1 agreement of every inference engine with fp32, on a trained model: the digits' 450 held-out images.

Random weights say nothing about agreement (their logits are nearly tied); a trained model does. The
reference is the plain model in fp32; every installed (backend, precision) pair runs the same held-out
images; int8 is calibrated on the first 256 training digits (never the held-out ones).

Usage: python benchmarks/agreement_digits.py [--weights runs/demo/best.safetensors] [--json FILE]
(`make demo` writes the default weights.)
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from inceptionv3 import load_model
from inceptionv3.data.datasets import load_labeled
from inceptionv3.data.loaders import labeled_loader
from inceptionv3.data.transforms import eval_transform
from inceptionv3.engine import engine as engine_mod
from inceptionv3.runtime.files import write_text_atomic

PAIRS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
         ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
TARGETS = {"bf16": 99.5, "int8": 99.0}   # the agreement we hold the engines to: top-1 with fp32, percent


def images(weights_model: torch.nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    mode = "L" if getattr(weights_model, "in_chans", 3) == 1 else "RGB"
    data = load_labeled("digits", split, eval_transform(weights_model.meta.preprocess), mode=mode)
    batches = list(labeled_loader(data, batch_size=256, shuffle=False, workers=0))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="runs/demo/best.safetensors")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    model = load_model(args.weights)
    x, y = images(model, "val")
    calibration = images(model, "train")[0][:256]
    with torch.inference_mode():
        ref = model.eval()(x).argmax(1)
    rows = []
    for backend, precision in PAIRS:
        try:
            engine = engine_mod.build_engine(model, precision=precision, backend=backend,
                                        calibration=calibration if precision == "int8" else None)
            pred = torch.cat([engine(b) for b in x.split(64)]).argmax(1)
        except ValueError as e:   # not installed or not available on this machine
            print(f"skipped {backend} {precision}: {e}", file=sys.stderr)
            continue
        rows.append({"backend": backend, "precision": precision, "images": len(y),
                     "agreement": 100.0 * float((pred == ref).float().mean()),
                     "differ": int((pred != ref).sum()), "top1": 100.0 * float((pred == y).float().mean())})
    print(f"{args.weights}: {len(y)} held-out digits; fp32 plain model top-1 "
          f"{100.0 * float((ref == y).float().mean()):.2f}%")
    print(f"{'backend':<12} {'precision':<9} {'agreement':>9} {'differ':>6} {'top-1':>7}  target")
    for r in rows:
        target = TARGETS.get(r["precision"])
        mark = "" if target is None else f">= {target}% {'met' if r['agreement'] >= target else 'NOT met'}"
        print(f"{r['backend']:<12} {r['precision']:<9} {r['agreement']:>8.2f}% {r['differ']:>6} "
              f"{r['top1']:>6.2f}%  {mark}")
    if args.json:
        write_text_atomic(args.json, json.dumps({"weights": args.weights, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
