"""Training: the small-data recipe as small functions, on one process or many (torchrun), crash-safe.

Recipe (works from scratch on a few thousand images, e.g. the embedded digits): AdamW without weight
decay on BN and bias parameters, a one-cycle LR schedule stepped per optimizer step, label smoothing 0.1,
gradient clipping at 2.0, aux loss weighted 0.4 when the aux head is on (only possible at >= 299 px).

A run folder holds: config.json (the TrainConfig, written first), metrics.jsonl (one JSON line per
epoch), last.pt (the newest checkpoint: model, optimizer, scheduler, every rank's RNG states, epoch and
step within it, partial epoch sums, history, config, class names, and a digest of it all), checkpoints/
(the last `keep_last` checkpoints, hard links named by global step), best.safetensors (the best
held-out top-1 so far, with class names and preprocessing, loadable by `weights.load_model`),
confusion.json (that epoch's held-out confusion matrix), bad_images.txt (images skipped, when any) and
tensorboard/ (event files, when tensorboard is installed). Checkpoint files are handled by `checkpoint.py`.

By default the step runs in bf16 autocast where the hardware has native bf16 (`--amp auto`) on
channels-last tensors; `--grad-checkpointing` trades compute for memory and `--compile` runs the forward
through torch.compile. A linear probe computes the frozen backbone's features once (`cache_features`).

Checkpoints are written atomically every epoch and every `save_every` steps; `resume` continues from the
newest one that loads and matches its digest. The data order is a pure function of (seed, epoch) and each
sample's augmentation of (seed, epoch, index), so a resumed or multi-process run sees exactly the batches
an uninterrupted single-process run sees.
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
