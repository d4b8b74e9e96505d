"""``inceptionv3 weights``: list the registry, or download an entry into the cache."""
from __future__ import annotations

import argparse

from .common import EXIT_OK, CommandError

NAME = "weights"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="list or download registered weights",
                       description="List the weights registry, or download an entry into the cache "
                                   "($INCEPTIONV3_HOME, default ~/.cache/inceptionv3).")
    p.add_argument("action", nargs="?", choices=("list", "download"), default="list")
    p.add_argument("name", nargs="?", help="entry to download")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="for an entry published without a sha256: accept the download and pin its hash")
    return p


def run(args: argparse.Namespace) -> int:
    # Imported when the command runs: every command's --help imports this module.
    from ..weights.registry import REGISTRY, get_entry
    if args.action == "download":
        from ..weights.hub import fetch
        if not args.name:
            raise CommandError("weights download needs a NAME; see 'inceptionv3 weights list'")
        print(fetch(get_entry(args.name), progress=True, trust_on_first_use=args.trust_on_first_use))
        return EXIT_OK
    width = max(len(n) for n in REGISTRY) + 2

    def acc(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"{'name':<{width}}{'arch':<15}{'classes':>8}{'input':>7}{'acc@1':>8}{'acc@5':>8}  "
          f"{'sha256':<15}source")
    for e in REGISTRY.values():
        m = e.metrics
        sha = "none published" if not e.sha256 else e.sha256[:8]
        print(f"{e.name:<{width}}{e.arch:<15}{e.num_classes:>8}{e.preprocess.input_size:>7}"
              f"{acc(m.get('acc@1')):>8}{acc(m.get('acc@5')):>8}  {sha:<15}{e.source}")
    return EXIT_OK
