"""Pictures of a training run: loss, top-1 and learning-rate curves per epoch (from metrics.jsonl) and the
best epoch's held-out confusion matrix (from confusion.json), as PNG files.

`inceptionv3 plot RUN_DIR` calls `plot_run`. Only matplotlib's Agg canvas is used (no pyplot): no display
is needed and no global backend is switched.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.files import atomic_path

# One figure per row: file name, title, y label, and the metrics.jsonl keys drawn as (key, legend label).
CURVES: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("loss.png", "loss", "cross-entropy", (("train_loss", "train"), ("val_loss", "held-out"))),
    ("accuracy.png", "accuracy", "top-1 / top-5 (%)",
     (("train_acc1", "train top-1"), ("val_acc1", "held-out top-1"), ("val_acc5", "held-out top-5"))),
    ("lr.png", "learning rate (at the end of each epoch)", "learning rate", (("lr", "lr"),)),
)


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of a run folder's metrics.jsonl; a clear error when there are none."""
    run = Path(run)
    path = run / "metrics.jsonl"
    if not run.is_dir():
        raise ValueError(f"{run}: no such folder; give the --out folder of an 'inceptionv3 train' run")
    if not path.is_file():
        raise ValueError(f"{run}: no metrics.jsonl here; give the --out folder of an 'inceptionv3 train' run "
                         "(the file appears when its first epoch ends)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path}: no finished epoch yet; plot again after the first epoch ends")
    return records


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_curves(records: Sequence[dict[str, Any]], out: str | os.PathLike) -> list[Path]:
    """loss.png, accuracy.png and lr.png in `out`, one point per epoch; returns the files written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'inceptionv3[plot]'") from e
    out = Path(out)
    epochs = [r["epoch"] for r in records]
    written = []
    for name, title, ylabel, series in CURVES:
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for key, label in series:
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=label)
        if name == "lr.png":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        written.append(_save(fig, out / name))
    return written


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """All pictures of a run folder into `out` (default RUN/plots): the curves, and confusion.png when
    the run saved its best epoch's confusion matrix. Returns the files written."""
    from ..tasks.evaluate import plot_confusion  # here: it loads torch, which the curves do not need

    run = Path(run)
    records = read_metrics(run)
    out = Path(out) if out is not None else run / "plots"
    written = plot_curves(records, out)
    confusion = run / "confusion.json"
    if confusion.is_file():
        saved = json.loads(confusion.read_text())
        plot_confusion(np.asarray(saved["matrix"]), saved["class_names"], out / "confusion.png")
        written.append(out / "confusion.png")
    return written
