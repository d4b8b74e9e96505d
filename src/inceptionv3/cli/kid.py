"""``inceptionv3 kid``: the Kernel Inception Distance of two image sets."""
from __future__ import annotations

import argparse

from .common import add_metric_parser, metric_kwargs, report_metric, with_warnings

NAME = "kid"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_metric_parser(sub, NAME, "Kernel Inception Distance of two image sets", 2,
                          "KID between image folders A and B (cubic polynomial kernel, random subsets).")
    p.add_argument("--kid-subsets", type=int, default=100, help="number of subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="images per subset (default 1000)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..metrics.pipeline import kid
    r = with_warnings(kid, args.a, args.b, dims=args.dims, subsets=args.kid_subsets,
                      subset_size=args.kid_subset_size, **metric_kwargs(args))
    return report_metric(args, r, f"KID: {r['kid']:.6g} +- {r['kid_std']:.6g}  (n={r['n'][0]}, {r['n'][1]}; "
                                  f"{r['subsets']} subsets of {r['subset_size']}; {args.mode}, {args.dims}-d)",
                         failed=r["failed"])
