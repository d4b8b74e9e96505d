"""``inceptionv3 stats``: the FID statistics (mean, covariance, metadata) of an image set."""
from __future__ import annotations

import argparse

from .common import EXIT_OK, add_metric_parser, metric_kwargs

NAME = "stats"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_metric_parser(sub, NAME, "FID statistics of an image set to a .npz file", 1,
                          "Write mean and covariance (pytorch-fid's mu/sigma) plus metadata to a .npz file.")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output statistics file")
    return p


def run(args: argparse.Namespace) -> int:
    from ..metrics.pipeline import compute_stats
    from ..metrics.stats import save_stats
    stats = compute_stats(args.a, dims=args.dims, **metric_kwargs(args))
    out = save_stats(stats, args.out)
    print(f"wrote {args.dims}-d statistics of {stats.n} images ({args.mode}) to {out}")
    return EXIT_OK
