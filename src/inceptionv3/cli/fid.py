"""``inceptionv3 fid``: the Fréchet Inception Distance of two image sets or statistics files."""
from __future__ import annotations

import argparse

from .common import add_metric_parser, metric_kwargs, report_metric, with_warnings

NAME = "fid"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_metric_parser(sub, NAME, "Fréchet Inception Distance of two image sets", 2,
                          "FID between A and B (folders, statistics files, or one of each).")
    p.add_argument("--legacy-sqrtm", action="store_true",
                   help="pytorch-fid's scipy sqrtm route instead of the symmetric eigh route")
    p.add_argument("--strict", action="store_true",
                   help="error (not warning) when the statistics differ in weights, tap or mode")
    return p


def run(args: argparse.Namespace) -> int:
    from ..metrics.pipeline import fid
    r = with_warnings(fid, args.a, args.b, dims=args.dims, legacy_sqrtm=args.legacy_sqrtm,
                      strict=args.strict, **metric_kwargs(args))
    d = r["diagnostics"]
    mode = r["meta"][0].get("mode", "mode unknown")
    detail = (f"smallest eigenvalue {d['min_eigenvalue']:.3g}" if r["method"] == "eigh"
              else f"largest imaginary part dropped {d['max_imag']:.3g}")
    return report_metric(args, r, f"FID: {r['fid']:.6f}  (n={r['n'][0]}, {r['n'][1]}; {mode}, {r['dims']}-d, "
                                  f"{r['method']}; {detail})")
