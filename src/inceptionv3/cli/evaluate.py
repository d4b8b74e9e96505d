"""``inceptionv3 evaluate``: top-1/top-5, per-class precision and recall, the confusion matrix."""
from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_OK, EXIT_SOME_FAILED, add_engine_args, check_output, engine_options, output_errors

NAME = "evaluate"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="top-1/top-5, per-class precision/recall, confusion matrix",
                       description="Evaluate a saved model on labelled data ('digits' uses its held-out split). "
                                   "Exit code 0: every image scored; 1: some (or all) could not be read; "
                                   "2: usage error.")
    p.add_argument("data", help="'digits' or an image folder")
    p.add_argument("--weights", required=True, help="model file (e.g. runs/demo/best.safetensors) or entry")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split (default val)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw the confusion matrix")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="for a single folder or list: the held-out share used in training (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="for a single folder or list: the training seed")
    p.add_argument("--crops", type=int, default=1, choices=(1, 10, 12, 144),
                   help="average the softmax over 10 (ten-crop), 12 or 144 crops per image (the paper's "
                        "multi-crop evaluation; see docs/training.md); --batch-size then counts crops")
    add_engine_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.plot:
        check_output(args.plot, "--plot")   # before the run, not after it
    from ..runtime.distributed import env_from_environ, teardown
    from ..tasks.evaluate import EVALUATE_OPTIONS, NoUsableImages, evaluate, format_report, plot_confusion
    try:
        result = evaluate(args.data, args.weights, split=args.split, crops=args.crops,
                          val_fraction=args.val_fraction, seed=args.seed,
                          options=engine_options(args, EVALUATE_OPTIONS))
    except NoUsableImages as e:
        print(f"inceptionv3 evaluate: error: {e}", file=sys.stderr)
        return EXIT_SOME_FAILED
    teardown()
    if not env_from_environ().is_main:   # under torchrun every rank has the summed result; rank 0 reports
        return EXIT_OK
    if args.format == "json":
        print(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}, indent=2))
    else:
        print(format_report(result, result["class_names"]))
    if args.plot:
        with output_errors(args.plot, "--plot"):
            plot_confusion(result["confusion"], result["class_names"], args.plot)
        print(f"confusion matrix drawn to {args.plot}", file=sys.stderr)
    if result["skipped"]:
        print(f"inceptionv3 evaluate: {result['skipped']} images could not be read and were skipped; "
              "the numbers above leave them out", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK
