"""``inceptionv3 is``: the Inception Score of an image set."""
from __future__ import annotations

import argparse

from .common import add_metric_parser, metric_kwargs, report_metric, with_warnings

NAME = "is"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_metric_parser(sub, NAME, "Inception Score of an image set", 1,
                          "Inception Score of image folder A (softmax over the FID net's 1008 logits).")
    p.add_argument("--splits", type=int, default=10, help="splits (default 10)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..metrics.pipeline import inception_score
    r = with_warnings(inception_score, args.a, splits=args.splits, **metric_kwargs(args))
    return report_metric(args, r, f"IS: {r['is']:.6g} +- {r['is_std']:.6g}  (n={r['n']}; {r['splits']} splits; "
                                  f"{args.mode}; {r['logits']})", failed=r["failed"])
