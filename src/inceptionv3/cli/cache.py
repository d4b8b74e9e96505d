"""``inceptionv3 cache``: list the caches (downloaded weights, exported engines) with their sizes, or clear
them, removing only files the tool made."""
from __future__ import annotations

import argparse

from .common import EXIT_OK

NAME = "cache"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="list or clear the caches (weights, engines)",
                       description="List the caches under $INCEPTIONV3_HOME (default ~/.cache/inceptionv3) "
                                   "with their sizes, or clear them. Only files inceptionv3 made are removed; "
                                   "anything else found there is listed and left alone.")
    p.add_argument("action", nargs="?", choices=("list", "clear"), default="list")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weights", action="store_true", help="only the downloaded weights")
    which.add_argument("--engines", action="store_true", help="only the exported engine graphs")
    return p


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def run(args: argparse.Namespace) -> int:
    # Imported when the command runs: every command's --help imports this module.
    from ..runtime.files import quote_path
    from ..weights.cache import AREAS, cache_report, clear_cache, torch_hub_files
    areas = ("weights",) if args.weights else ("engines",) if args.engines else AREAS
    if args.action == "clear":
        for area in clear_cache(areas):
            print(f"{area.name}: removed {len(area.files)} file(s), {_size(area.size)}, from "
                  f"{quote_path(area.folder)}")
            if area.foreign:
                print(f"  left {len(area.foreign)} file(s) inceptionv3 did not make, first: "
                      f"{quote_path(area.foreign[0])}")
        return EXIT_OK
    for area in cache_report(areas):
        print(f"{area.name:<8} {len(area.files):>4} file(s) {_size(area.size):>10}  {quote_path(area.folder)}")
        for path in area.files:
            print(f"  {_size(path.lstat().st_size):>10}  {quote_path(path.relative_to(area.folder))}")
        if area.foreign:
            print(f"  + {len(area.foreign)} file(s) inceptionv3 did not make (never removed)")
    if "weights" in areas:
        for path in torch_hub_files():
            print(f"torch hub: {quote_path(path)} ({_size(path.lstat().st_size)}; used in place when it passes "
                  f"the hash, never removed)")
    return EXIT_OK
