"""``inceptionv3 convert``: Keras, TF-slim, torchvision, timm or pytorch-fid weights to our .safetensors."""
from __future__ import annotations

import argparse

from ..weights.convert import SOURCES  # torch-free; the converters load torch when they run
from .common import EXIT_OK

NAME = "convert"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="convert Keras / TF-slim / torchvision / timm / pytorch-fid files",
                       description="Convert a weights file from another framework into a self-describing "
                                   ".safetensors file, checking every tensor's shape.")
    p.add_argument("src", help="source weights file (TF-slim: a .ckpt file, or a checkpoint prefix or its "
                               ".index)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES, help="where the file comes from")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--num-classes", type=int, default=None,
                   help="Keras no-top file: add a fresh zero classifier with this many classes")
    p.add_argument("--keep-background", action="store_true",
                   help="TF-slim: keep the background class (index 0): 1001 outputs instead of 1000")
    p.add_argument("--ema", action="store_true",
                   help="TF-slim: use the weights' ExponentialMovingAverage copies saved during training")
    return p


def run(args: argparse.Namespace) -> int:
    from ..weights.convert.run import convert
    r = convert(args.src, args.source, args.out, num_classes=args.num_classes,
                keep_background=args.keep_background, ema=args.ema)
    print(f"converted {args.source} weights {args.src} ({r['tensors']} tensors checked) to {r['path']}")
    return EXIT_OK
