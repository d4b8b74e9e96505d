"""``inceptionv3 prdc``: precision, recall, density and coverage of a generated set against a real one."""
from __future__ import annotations

import argparse

from .common import add_metric_parser, metric_kwargs, report_metric, with_warnings
from .fid import add_score_args

NAME = "prdc"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_metric_parser(sub, NAME, "precision, recall, density and coverage of two image sets", 2,
                          "Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. "
                          "2020) of generated set A against real set B, from k-nearest-neighbour balls in the "
                          "FID features.")
    add_score_args(p, kid=False, inception=False)
    return p


def run(args: argparse.Namespace) -> int:
    from ..metrics.scores import score
    r = with_warnings(score, args.a, args.b, ("prdc",), dims=args.dims, k=args.k, **metric_kwargs(args))
    line = (f"precision: {r['precision']:.6f}  recall: {r['recall']:.6f}  density: {r['density']:.6f}  "
            f"coverage: {r['coverage']:.6f}  (n={r['n'][0]}, {r['n'][1]}; k={r['k']}; {r['mode']}, {r['dims']}-d)")
    return report_metric(args, r, line, failed=sum(r["failed"]))
