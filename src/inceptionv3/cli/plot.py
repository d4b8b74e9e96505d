"""``inceptionv3 plot``: PNG curves and the confusion matrix of a training run."""
from __future__ import annotations

import argparse

from .common import EXIT_OK

NAME = "plot"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="PNG curves and confusion matrix of a training run",
                       description="Draw loss, top-1/top-5 and learning-rate curves (from RUN_DIR/metrics.jsonl) "
                                   "and the best epoch's held-out confusion matrix as PNG files.")
    p.add_argument("run", metavar="RUN_DIR", help="the --out folder of 'inceptionv3 train'")
    p.add_argument("--out", default=None, help="folder for the PNG files (default RUN_DIR/plots)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.plot import plot_run
    for path in plot_run(args.run, args.out):
        print(path)
    return EXIT_OK
