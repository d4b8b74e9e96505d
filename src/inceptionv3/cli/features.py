"""``inceptionv3 features``: an N x D feature matrix of images, resumable."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..models.taps import TAPS
from ..tasks.formats import FEATURE_FORMATS
from .common import EXIT_OK, EXIT_SOME_FAILED, CommandError, add_inference_args, engine_options

NAME = "features"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="extract image features to a file",
                       description="Write an N x D float32 feature matrix and the ordered image paths "
                                   "to .npy (paths in FILE.paths.txt), .npz or .safetensors.")
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
    from ..runtime.distributed import env_from_environ, teardown
    from ..tasks.features import discard_partial, extract_features, partial_folder, save_features

    partial = partial_folder(args.out)

    def stop(signum: int, frame) -> None:    # SIGTERM as Ctrl-C: the finished rows are saved on the way out
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        result = extract_features(args.paths, weights=args.weights, layer=args.layer, arch=args.arch,
                                  resume=partial, restart=args.restart, options=engine_options(args))
    except KeyboardInterrupt:
        print(f"inceptionv3 features: stopped; the finished images are kept in {partial}: run the same "
              "command again to continue (--restart to start over)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    teardown()
    if not env_from_environ().is_main:   # under torchrun rank 0 holds the merged result and writes it
        return EXIT_OK
    out = save_features(result, args.out)
    discard_partial(partial)
    n, d = result.features.shape
    print(f"wrote {n} x {d} features ({args.layer}) to {out}")
    for path, why in result.failures:
        print(f"failed: {path}: {why}", file=sys.stderr)
    if result.failures:
        print(f"inceptionv3 features: {len(result.failures)} images failed (listed above)", file=sys.stderr)
    return EXIT_SOME_FAILED if result.failures else EXIT_OK
