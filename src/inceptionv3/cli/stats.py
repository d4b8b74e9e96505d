"""``inceptionv3 stats``: the FID statistics (mean, covariance, metadata) of an image set, or with
``--info`` what one or two statistics files hold and whether they are comparable."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    CommandError,
    add_metric_parser,
    check_output,
    is_main_rank,
    metric_kwargs,
    output_errors,
)

NAME = "stats"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_metric_parser(sub, NAME, "FID statistics of an image set to a .npz file", 1,
                          "Write mean and covariance (pytorch-fid's mu/sigma) plus metadata to a .npz file; "
                          "with --info, describe statistics files (ours, pytorch-fid/TTUR, clean-fid, EDM, ADM).")
    p.add_argument("b", metavar="B", nargs="?", help="with --info: a second statistics file to compare with A")
    p.add_argument("--out", metavar="FILE.npz", help="output statistics file (required unless --info)")
    p.add_argument("--sfid", action="store_true",
                   help="also sFID's spatial statistics (mu_s, sigma_s, as ADM's reference batches hold them)")
    p.add_argument("--info", action="store_true",
                   help="describe statistics file A (and B): tool, mode, dims, count; whether they are comparable")
    return p


def _info(args: argparse.Namespace) -> int:
    from ..metrics.stats import StatsMismatchError, check_compatible, describe, has_spatial, load_stats
    files = [f for f in (args.a, args.b) if f]
    main = is_main_rank()       # under torchrun rank 0 describes; a file that cannot be read fails every rank
    loaded = []
    for f in files:
        s = load_stats(f)
        loaded.append(s)
        spatial = has_spatial(f)
        if main:
            print(describe(s) + ("; with sFID statistics (mu_s, sigma_s)" if spatial else ""))
    if len(loaded) == 2 and main:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                problems = check_compatible(*loaded)
            except StatsMismatchError as e:
                problems = [str(e)]
        if problems:
            print("not comparable as they stand:")
            for p in problems:
                print(f"  {p}")
        else:
            print("comparable: same weights, tap, dims and mode")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.info:
        return _info(args)
    if args.b is not None:
        raise CommandError(f"stats takes one image set (got a second input, {args.b}); two files are for --info")
    if not args.out:
        raise CommandError("stats needs --out FILE.npz (or --info to describe statistics files)")
    if Path(args.out).suffix != ".npz":
        raise CommandError(f"--out {args.out}: statistics files are .npz; use that suffix")
    check_output(args.out, "--out")      # before the compute, not after
    from ..metrics.modes import SFID_DIMS
    from ..metrics.pipeline import compute_stats
    from ..metrics.stats import save_stats
    kwargs = metric_kwargs(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = compute_stats(args.a, dims=args.dims, **kwargs)
        spatial = compute_stats(args.a, dims=SFID_DIMS, **kwargs) if args.sfid else None
    main = is_main_rank()     # every rank holds the same statistics; under torchrun rank 0 reports them
    if main:
        for w in dict.fromkeys(str(w.message) for w in caught):
            print(f"inceptionv3 stats: warning: {w}", file=sys.stderr)
    out = args.out
    if main:      # one writer: the other ranks hold the same statistics
        with output_errors(args.out, "--out"):
            out = save_stats(stats, args.out, spatial)
    failed = int(stats.meta.get("failed", 0))
    if main:
        extra = " and sFID's spatial statistics" if spatial is not None else ""
        print(f"wrote {args.dims}-d statistics{extra} of {stats.n} images ({args.mode}) to {out}")
        if failed:
            print(f"inceptionv3 stats: {failed} image(s) could not be read (see the lines above); the "
                  f"statistics are over the rest", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK
