"""What a run folder records besides checkpoints: metrics.jsonl (one line per epoch), bad_images.txt
(images skipped), confusion.json (the best epoch's held-out confusion matrix) and TensorBoard events;
`RUN_FILES`, the names a run writes (all that `--overwrite` removes); and `writing`, which turns a failed
write (a full disk) into one line naming the file.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..runtime.files import WriteError, os_error_reason, write_text_atomic

logger = logging.getLogger(__name__)


def read_history(path: Path, epochs: int) -> list[dict[str, Any]]:
    """metrics.jsonl's records of the first `epochs` epochs (for checkpoints from before 'history')."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("epoch", 0) <= epochs]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """metrics.jsonl rewritten whole (atomically, on disk before the epoch's checkpoint names it in its
    history): an append cut short by a full disk would leave a torn last line."""
    with writing(path):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


@contextlib.contextmanager
def writing(path: Path, then: str = "") -> Iterator[None]:
    """A failure to write `path` (a full disk, permissions) as one `WriteError` naming it, its reason and,
    given, what to do once it is fixed. Every file of a run is written atomically, so it is as before."""
    try:
        yield
    except (OSError, RuntimeError) as e:   # RuntimeError: torch.save's words for a failed write
        if isinstance(e, WriteError):
            reason = e.reason
        elif isinstance(e, OSError):
            reason = os_error_reason(e, path)
        else:
            reason = " ".join(str(e).split()[:20])
        raise WriteError(path, f"{reason}; {then}" if then else reason, getattr(e, "errno", None)) from None


BAD_IMAGES_FILE = "bad_images.txt"   # epoch, split, path, reason of every image skipped (tab-separated)
CONFUSION_FILE = "confusion.json"    # the best epoch's held-out confusion matrix, for `inceptionv3 plot`
TB_FOLDER = "tensorboard"            # TensorBoard event files (when tensorboard is installed)
# Every file a run writes: the folder's own, and the file patterns of its sub-folders.
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.safetensors", BAD_IMAGES_FILE, CONFUSION_FILE)
RUN_PATTERNS = {"checkpoints": ("step-*.pt", "step-*.safetensors"), TB_FOLDER: ("events.out.tfevents.*",)}
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
        with writing(path):
            write_text_atomic(path, "\n".join([header, *lines]) + "\n")


def run_files(out: Path) -> list[Path]:
    """The files in `out` that a run writes (`RUN_FILES`, `RUN_PATTERNS`); plain files only, no links."""
    found = [out / name for name in RUN_FILES]
    for folder, patterns in RUN_PATTERNS.items():
        if (out / folder).is_dir() and not (out / folder).is_symlink():
            found += [p for pattern in patterns for p in sorted((out / folder).glob(pattern))]
    return [p for p in found if p.is_file() and not p.is_symlink()]


def remove_run_files(out: Path) -> int:
    """Remove the files a run wrote in `out` (and its sub-folders once empty); anything else stays."""
    files = run_files(out)
    for path in files:
        path.unlink()
    for folder in RUN_PATTERNS:
        with contextlib.suppress(OSError):   # not there, or holding files the run did not write
            (out / folder).rmdir()
    return len(files)
