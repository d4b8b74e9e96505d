"""What a run folder records besides checkpoints: metrics.jsonl (one line per epoch), bad_images.txt
(images skipped), confusion.json (the best epoch's held-out confusion matrix) and TensorBoard events.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..runtime.files import write_text_atomic

logger = logging.getLogger(__name__)


def read_history(path: Path, epochs: int) -> list[dict[str, Any]]:
    """metrics.jsonl's records of the first `epochs` epochs (for checkpoints from before 'history')."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("epoch", 0) <= epochs]


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, flushed to disk before the epoch's checkpoint names it in its history."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


BAD_IMAGES_FILE = "bad_images.txt"   # epoch, split, path, reason of every image skipped (tab-separated)
CONFUSION_FILE = "confusion.json"    # the best epoch's held-out confusion matrix, for `inceptionv3 plot`
TB_FOLDER = "tensorboard"            # TensorBoard event files (when tensorboard is installed)
TB_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc1": "top1/train",
           "val_acc1": "top1/val", "val_acc5": "top5/val", "lr": "lr", "skipped": "data/skipped_images",
           "nonfinite_steps": "data/nonfinite_steps", "seconds": "time/epoch_seconds"}


def open_tensorboard(folder: Path):
    """A SummaryWriter into `folder`, or None (with a note) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: no event files (pip install 'inceptionv3[tensorboard]'); "
                    "metrics.jsonl and 'inceptionv3 plot' have the same numbers")
        return None
    return SummaryWriter(log_dir=str(folder))


def recording_bad(loader, into: list[list[str]]) -> Iterator:
    """`loader`'s batches, noting the [path, reason] of each image a batch skipped."""
    for batch in loader:
        into.extend([b.path, b.reason] for b in getattr(batch[2], "images", ()))
        yield batch


def write_bad_images(path: Path, epoch: int, train_bad: list, val_bad: list) -> None:
    """Rewrite `path` (atomically) with the earlier epochs' lines plus this epoch's skipped images, one
    line each: epoch, split, path, reason. No file while no image was ever skipped."""
    header = "epoch\tsplit\tpath\treason"
    lines = []
    if path.is_file():   # a resumed run keeps what its earlier epochs found
        lines = [line for line in path.read_text().splitlines()[1:]
                 if line.split("\t", 1)[0].isdigit() and int(line.split("\t", 1)[0]) < epoch]
    for split, bad in (("train", train_bad), ("val", val_bad)):
        for file, reason in sorted({(str(f), " ".join(str(r).split())) for f, r in bad}):
            lines.append(f"{epoch}\t{split}\t{file}\t{reason}")
    if lines:
        write_text_atomic(path, "\n".join([header, *lines]) + "\n")
