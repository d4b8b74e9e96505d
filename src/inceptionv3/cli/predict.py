"""``inceptionv3 predict``: the top-k classes of images."""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from .common import EXIT_OK, EXIT_SOME_FAILED, add_inference_args, engine_options

NAME = "predict"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="top-k classes of images",
                       description="Classify images and print the top-k labels with probabilities. "
                                   "Exit code 0: all images classified; 1: some failed; 2: usage error.")
    add_inference_args(p)
    p.add_argument("--top-k", type=int, default=None,
                   help="classes per image (default 5, or every class of a model with fewer)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--strict", action="store_true", help="stop at the first image that fails")
    return p


def run(args: argparse.Namespace) -> int:
    from ..runtime.files import quote_path
    from ..tasks.predict import ImageFailure, predict
    try:
        results = predict(args.paths, weights=args.weights, top_k=args.top_k, strict=args.strict, arch=args.arch,
                          options=engine_options(args))
    except ImageFailure as e:
        print(f"inceptionv3 predict: {e} (stopped: --strict)", file=sys.stderr)
        return EXIT_SOME_FAILED
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":     # the csv module quotes a field with a line break or a quote in it
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "rank", "index", "label", "probability", "error"])
        for r in results:
            if "error" in r:
                w.writerow([r["path"], "", "", "", "", r["error"]])
            for rank, p in enumerate(r.get("predictions", []), 1):
                w.writerow([r["path"], rank, p["index"], p["label"], f"{p['probability']:.6f}", ""])
        print(buf.getvalue(), end="")
    else:
        for r in results:
            print(quote_path(r["path"]))     # one line per name, whatever the name holds
            if "error" in r:
                print(f"    error: {r['error']}")
            for p in r.get("predictions", []):
                print(f"    {p['probability']:7.2%}  {p['label']}  [{p['index']}]")
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"inceptionv3 predict: {len(failed)} of {len(results)} images failed (listed above)",
              file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK
