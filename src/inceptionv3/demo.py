"""Helpers for ``make demo``: write held-out digits as PNG files and check the held-out accuracy target.

The demo itself is the ``inceptionv3`` commands in the Makefile, so it shows exactly what a user types.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data.datasets import digits_split


def write_digits(out: str | Path, count: int = 10, split: str = "val") -> list[Path]:
    """Write the first ``count`` digits of a split as 8x8 grayscale PNGs named ``NNN_label-D.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = digits_split(split)
    paths = []
    for i, (img, label) in enumerate(zip(images[:count], labels[:count])):
        path = out / f"{i:03d}_label-{label}.png"
        img.save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inceptionv3.demo")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-digits", help="write held-out digits as PNG files")
    w.add_argument("out")
    w.add_argument("--count", type=int, default=10)
    c = sub.add_parser("check", help="check predictions written by 'inceptionv3 predict --format json'")
    c.add_argument("predictions")
    args = p.parse_args(argv)
    if args.cmd == "write-digits":
        paths = write_digits(args.out, args.count)
        print(f"wrote {len(paths)} held-out digits to {args.out}/")
        return 0
    results = json.loads(Path(args.predictions).read_text())
    right = sum(Path(r["path"]).stem.endswith(f"label-{r['predictions'][0]['label']}")
                for r in results if "predictions" in r)
    print(f"the saved model labels {right} of {len(results)} held-out PNG files correctly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
