"""``inceptionv3 fid``: the Fréchet Inception Distance of two image sets or statistics files, and with
``--also`` / ``--sfid`` the other metrics from the same pass over the images."""
from __future__ import annotations

import argparse

from ..metrics.modes import METRICS, parse_metrics
from .common import add_metric_parser, metric_kwargs, report_metric, with_warnings

NAME = "fid"


def metrics_arg(text: str) -> tuple[str, ...]:
    """``--also`` values: comma-separated metric names."""
    try:
        return parse_metrics(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_score_args(p: argparse.ArgumentParser, kid: bool = True, inception: bool = True, knn: bool = True,
                   knn_default: int = 5) -> None:
    """The settings of the metrics a pass can add: KID's subsets, the Inception Score's splits, PRDC's k."""
    if kid:
        p.add_argument("--kid-subsets", type=int, default=100, help="KID: number of subsets (default 100)")
        p.add_argument("--kid-subset-size", type=int, default=1000,
                       help="KID: images per subset (default 1000)")
    if inception:
        p.add_argument("--splits", type=int, default=10, help="Inception Score: splits (default 10)")
    if knn:
        p.add_argument("--k", type=int, default=knn_default,
                       help=f"precision/recall/density/coverage: nearest neighbours (default {knn_default})")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_metric_parser(sub, NAME, "Fréchet Inception Distance of two image sets", 2,
                          "FID between A (generated) and B (reference): folders, statistics files, or one of "
                          "each. --also adds other metrics computed from the same features.")
    p.add_argument("--legacy-sqrtm", action="store_true",
                   help="pytorch-fid's scipy sqrtm route instead of the symmetric eigh route")
    p.add_argument("--strict", action="store_true",
                   help="error (not warning) when the statistics differ in weights, tap or mode")
    p.add_argument("--also", type=metrics_arg, default=(), metavar="M[,M...]",
                   help=f"more metrics from the same pass over the images: {', '.join(METRICS[1:])} "
                        "(kid, is and prdc need images, not statistics files; is scores A)")
    p.add_argument("--sfid", action="store_true",
                   help="also sFID (ADM's spatial features, mixed_6/conv; a second pass that stops at Mixed_6d)")
    add_score_args(p)
    return p


def _lines(r: dict, args: argparse.Namespace) -> list[str]:
    """One line per metric in ``r`` (the result of ``scores.score`` or ``pipeline.fid``)."""
    lines = []
    if "fid" in r:
        d = r["diagnostics"]
        mode = r["meta"][0].get("mode") or "mode unknown"
        detail = (f"smallest eigenvalue {d['min_eigenvalue']:.3g}" if r["method"] == "eigh"
                  else f"largest imaginary part dropped {d['max_imag']:.3g}")
        lines.append(f"FID: {r['fid']:.6f}  (n={r['n'][0]}, {r['n'][1]}; {mode}, {r['dims']}-d, {r['method']}; "
                     f"{detail})")
    if "sfid" in r:
        lines.append(f"sFID: {r['sfid']:.6f}  (mixed_6/conv, first 7 channels, 2023-d)")
    if "kid" in r:
        lines.append(f"KID: {r['kid']:.6g} +- {r['kid_std']:.6g}  ({r['subsets']} subsets of {r['subset_size']})")
    if "is" in r:
        lines.append(f"IS: {r['is']:.6g} +- {r['is_std']:.6g}  (of A; {r['splits']} splits)")
    if "density" in r:
        lines.append(f"precision: {r['precision']:.6f}  recall: {r['recall']:.6f}  density: {r['density']:.6f}  "
                     f"coverage: {r['coverage']:.6f}  (k={r['k']})")
    return lines


def run(args: argparse.Namespace) -> int:
    extra = tuple(args.also) + (("sfid",) if args.sfid else ())
    if not extra:
        from ..metrics.pipeline import fid
        r = with_warnings(fid, args.a, args.b, dims=args.dims, legacy_sqrtm=args.legacy_sqrtm,
                          strict=args.strict, **metric_kwargs(args))
    else:
        from ..metrics.scores import score
        r = with_warnings(score, args.a, args.b, ("fid", *extra), dims=args.dims,
                          legacy_sqrtm=args.legacy_sqrtm, strict=args.strict, kid_subsets=args.kid_subsets,
                          kid_subset_size=args.kid_subset_size, splits=args.splits, k=args.k,
                          **metric_kwargs(args))
    return report_metric(args, r, "\n".join(_lines(r, args)), failed=sum(r.get("failed", [])))
