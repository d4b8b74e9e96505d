"""``inceptionv3 train``: train or fine-tune; one flag per ``TrainConfig`` field.

The flags' defaults are left out of the parsed arguments, so that ``run`` knows which flags were given:
a new run takes ``TrainConfig``'s defaults for the others, ``--resume RUN`` the run's saved values.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..training.config import TrainConfig  # torch-free: the parser is built without loading torch
from .common import EXIT_OK, EXIT_SOME_FAILED, CommandError, add_dataclass_args, show_progress

NAME = "train"
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


class _NotGiven:
    """The parsed value of a flag that was not on the command line (not a string: argparse converts those)."""

    def __repr__(self) -> str:
        return "not given"


NOT_GIVEN = _NotGiven()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="train or fine-tune on an image folder or the embedded digits",
                       description="Train on DATA: 'digits' (scikit-learn's handwritten digits, offline), "
                                   "an image folder with one sub-folder per class (or train/ and val/), or a "
                                   ".csv/.jsonl list of path,label (or a folder with train.csv and val.csv). "
                                   "'train --resume RUN' continues a run with its saved settings.")
    p.add_argument("data", nargs="?", help="'digits', an image folder or a .csv/.jsonl list "
                                           "(with --resume: the run's)")
    add_dataclass_args(p, TrainConfig, skip=("data",))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # The help above shows each default; a flag that was not given parses as NOT_GIVEN.
    p.set_defaults(**dict.fromkeys(FIELDS, NOT_GIVEN))
    return p


def config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the flags given, the rest from TrainConfig or, with --resume, the run."""
    given = {name: getattr(args, name) for name in FIELDS
             if getattr(args, name, NOT_GIVEN) is not NOT_GIVEN and getattr(args, name) is not None}
    if given.get("resume"):
        from ..training.resume import resumed_config
        return resumed_config(given["resume"], given)
    if "data" not in given:
        raise CommandError("give DATA ('digits', an image folder or a .csv/.jsonl list), or --resume RUN")
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    cfg = config(args)   # bad flags are found here, before anything is computed
    from ..training.control import TrainingFailed
    from ..training.run import train
    main_rank = os.environ.get("RANK", "0") == "0"   # under torchrun, the lines come from rank 0
    try:
        result = train(cfg, progress=show_progress(args))
    except TrainingFailed as e:
        if main_rank:
            print(f"inceptionv3 {NAME}: error: {e}", file=sys.stderr)
        return EXIT_SOME_FAILED
    if main_rank:
        print(f"best held-out top-1 (fp32) {result['best_acc1']:.2f}%  ->  {result['best_path']}")
    return EXIT_OK
