"""``inceptionv3 features``: an N x D feature matrix of images, resumable."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from ..models.taps import TAPS
from ..tasks.formats import FEATURE_FORMATS
from .common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    CommandError,
    add_inference_args,
    check_output,
    engine_options,
    output_errors,
)

NAME = "features"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="extract image features to a file",
                       description="Write an N x D float32 feature matrix and the ordered image paths "
                                   "to .npy (paths in FILE.paths.txt), .npz or .safetensors. An interrupted run "
                                   "keeps its finished images in OUT.partial and the same command continues "
                                   "it; one run at a time writes OUT (OUT.lock names it). Exit code 0: all "
                                   "images done; 1: some failed; 2: usage error.")
    add_inference_args(p)
    p.add_argument("--out", required=True, help="output file: " + ", ".join(FEATURE_FORMATS))
    p.add_argument("--layer", default="pool", choices=list(TAPS),
                   help="tap to read (spatial taps are averaged over space; default pool, 2048-d)")
    p.add_argument("--restart", action="store_true",
                   help="discard the finished images an interrupted run kept in OUT.partial and start over")
    return p


def run(args: argparse.Namespace) -> int:
    if Path(args.out).suffix.lower() not in FEATURE_FORMATS:    # before the run, not after it
        raise CommandError(f"--out {args.out}: unknown format {Path(args.out).suffix!r}; "
                           f"use one of {', '.join(FEATURE_FORMATS)}")
    check_output(args.out, "--out")
    from ..runtime.distributed import env_from_environ, teardown
    from ..runtime.files import quote_path
    from ..tasks.features import discard_partial, extract_features, output_lock, partial_folder, save_features

    partial = partial_folder(args.out)
    main_rank = env_from_environ().is_main

    def stop(signum: int, frame) -> None:    # SIGTERM as Ctrl-C: the finished rows are saved on the way out
        raise KeyboardInterrupt

    # One run per output: rank 0 holds OUT.lock while it reads and writes OUT and OUT.partial.
    with output_lock(args.out) if main_rank else contextlib.nullcontext():
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            result = extract_features(args.paths, weights=args.weights, layer=args.layer, arch=args.arch,
                                      resume=partial, restart=args.restart, options=engine_options(args))
        except KeyboardInterrupt:
            if partial.exists():
                print(f"inceptionv3 features: stopped; the finished images are kept in {partial}: run the "
                      "same command again to continue (--restart to start over)", file=sys.stderr)
            else:
                print("inceptionv3 features: stopped before any image was finished", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        teardown()
        if not main_rank:   # under torchrun rank 0 holds the merged result and writes it
            return EXIT_OK
        with output_errors(args.out, "--out"):
            out = save_features(result, args.out)
            discard_partial(partial)
    n, d = result.features.shape
    print(f"wrote {n} x {d} features ({args.layer}) to {out}")
    for path, why in result.failures:
        print(f"failed: {quote_path(path)}: {why}", file=sys.stderr)
    if result.failures:
        print(f"inceptionv3 features: {len(result.failures)} images failed (listed above)", file=sys.stderr)
    return EXIT_SOME_FAILED if result.failures else EXIT_OK
