"""The ``inceptionv3`` command: one sub-command per module of this package, registered here.

Building the parser imports every command module but nothing heavy: each module's ``add_parser`` reads
torch-free constants only, and its ``run`` imports the work it does, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..runtime.threads import prepare_process
from ..weights.errors import WeightsError
from .common import EXIT_USAGE, CommandError

# In the order `inceptionv3 --help` lists them.
COMMANDS = ("predict", "features", "explain", "serve", "info", "weights", "cache", "train", "plot", "evaluate",
            "fid", "kid", "inception_score", "prdc", "stats", "export", "convert", "bench")
# The command modules that run the network forward over many batches of one shape: their processes keep
# freed memory for the next batch (runtime.threads.keep_freed_memory).
INFERENCE_COMMANDS = frozenset({"predict", "features", "explain", "serve", "evaluate", "fid", "kid",
                                "inception_score", "prdc", "stats"})
VERBOSE_HELP = "log what the library does, and show tracebacks"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inceptionv3",
        description="InceptionV3: classify images, extract features, train and evaluate.",
        epilog="Run 'inceptionv3 COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"inceptionv3 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __package__)
        p = module.add_parser(sub)
        # -v after the command too (`inceptionv3 predict x.jpg -v`); SUPPRESS keeps a -v given before it.
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Progress lines (training epochs, downloads) are INFO; -v adds DEBUG detail and tracebacks.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s")
    # before anything loads torch; the command's module, since a command's name may differ from it (`is`)
    prepare_process(inference=args.func.__module__.rpartition(".")[2] in INFERENCE_COMMANDS)
    try:
        return args.func(args)
    except (CommandError, WeightsError, ValueError, OSError, ImportError) as e:
        # Our errors name the thing and the fix; a traceback would bury that. -v shows it anyway.
        if args.verbose:
            raise
        print(f"inceptionv3 {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"inceptionv3 {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    sys.exit(main())
