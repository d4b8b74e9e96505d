"""``inceptionv3 info``: parameters, multiply-adds and block shapes of a network."""
from __future__ import annotations

import argparse

from .common import EXIT_OK, CommandError

NAME = "info"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="parameters, multiply-adds and block shapes",
                       description="Summarise a network: parameters, multiply-adds, each block's output.")
    p.add_argument("--arch", default="inception_v3", choices=("inception_v3", "inception_mini"))
    p.add_argument("--input-size", type=int, default=None,
                   help="square input side in pixels (default: the weights' own input size, else 299)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--no-aux", action="store_true", help="leave out the aux head (inception_v3)")
    p.add_argument("--weights", default=None, help="summarise the network a weights file or entry builds")
    return p


def run(args: argparse.Namespace) -> int:
    from ..models.builder import build_model, min_input_size
    from ..models.summary import format_summary, summarize
    from ..weights.preprocess import MAX_SIDE
    if args.weights:
        from ..weights.load import load_model
        model = load_model(args.weights)
        size = args.input_size or model.meta.preprocess.input_size
    else:
        config = {"num_classes": args.num_classes}
        if args.arch == "inception_v3":
            config.update(aux_logits=not args.no_aux, init_weights=False)
        model = build_model(args.arch, **config)
        size = args.input_size or 299
    low = min_input_size(model)
    if not low <= size <= MAX_SIDE:
        raise CommandError(f"--input-size {size}: {model.arch} takes a side of {low} to {MAX_SIDE} pixels")
    print(format_summary(summarize(model, size)))
    return EXIT_OK
