"""``inceptionv3 train``: train or fine-tune; one flag per ``TrainConfig`` field."""
from __future__ import annotations

import argparse
import os

from ..training.config import TrainConfig  # torch-free: the parser is built without loading torch
from .common import EXIT_OK, add_dataclass_args, config_from, show_progress

NAME = "train"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="train or fine-tune on an image folder or the embedded digits",
                       description="Train on DATA: 'digits' (scikit-learn's handwritten digits, offline), "
                                   "an image folder with one sub-folder per class (or train/ and val/), or a "
                                   ".csv/.jsonl list of path,label (or a folder with train.csv and val.csv).")
    p.add_argument("data", help="'digits', an image folder or a .csv/.jsonl list")
    add_dataclass_args(p, TrainConfig, skip=("data",))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.run import train
    result = train(config_from(TrainConfig, args), progress=show_progress(args))
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one summary line, from rank 0
        print(f"best held-out top-1 {result['best_acc1']:.2f}%  ->  {result['best_path']}")
    return EXIT_OK
