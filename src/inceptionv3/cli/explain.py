"""``inceptionv3 explain``: where in each image the network found the evidence for a class (Captum)."""
from __future__ import annotations

import argparse
import sys

from ..tasks.explain import METHODS
from .common import EXIT_OK, EXIT_SOME_FAILED, add_image_args

NAME = "explain"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="heat maps of the evidence for a class (Grad-CAM and other Captum methods)",
                       description="Explain the network's decision on each image: write DIR/<name>.png (the "
                                   "map over the image the network saw) and DIR/<name>.npy (the map, H x W "
                                   "float32 in [0, 1]), and print the class explained with its probability. "
                                   "Exit code 0: all images explained; 1: some failed; 2: usage error.")
    add_image_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the overlays and maps")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="class to explain, an index or a class name (default: each image's top class)")
    p.add_argument("--method", default="gradcam", choices=METHODS,
                   help="attribution method (default gradcam: Grad-CAM on the last block)")
    p.add_argument("--layer", default=None,
                   help="module Grad-CAM reads (default: the last block, Mixed_7c or inception2)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the map in the overlay, 0-1 (default 0.5)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..tasks.explain import explain_files

    results = explain_files(args.paths, args.out, weights=args.weights, target=args.target, method=args.method,
                            layer=args.layer, alpha=args.alpha, device=args.device, batch_size=args.batch_size,
                            arch=args.arch)
    for r in results:
        if "error" in r:
            print(f"{r['path']}: error: {r['error']}")
        else:
            print(f"{r['path']}: {r['label']} [{r['index']}] {r['probability']:.2%} -> {r['png']}")
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"inceptionv3 explain: {len(failed)} of {len(results)} images failed (listed above)", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK
