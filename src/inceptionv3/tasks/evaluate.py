"""Classification metrics (top-k, confusion, per-class precision/recall) and a text / PNG report.

``evaluate_model`` is the one evaluation loop: a model (or engine) and a loader in, numbers out; training
calls it for its held-out split. ``evaluate`` wires saved weights (their own preprocessing and class names)
to a labeled data set through the engine; ``format_report`` and ``plot_confusion`` turn the numbers into
something a person reads.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import load_labeled
from ..data.loaders import labeled_loader
from ..data.transforms import MULTI_CROPS, multi_crop_transform
from ..engine.engine import build_engine
from ..engine.inputs import image_mode, thread_budget
from ..engine.options import Calibration, EngineOptions, engine_options
from ..runtime import distributed as dist_mod
from ..runtime.distributed import SINGLE_PROCESS, DistEnv
from ..runtime.files import atomic_path
from ..runtime.threads import resolve_device
from ..weights.load import load_model

logger = logging.getLogger(__name__)

# What `evaluate` runs with unless told otherwise: 64 images (or crops) per forward pass.
EVALUATE_OPTIONS = EngineOptions(batch_size=64)
MAX_PRINTED_CLASSES = 20  # wider confusion matrices do not fit a terminal; use --plot or the JSON output


class NoUsableImages(ValueError):
    """Every image of the split failed to decode: there is nothing to score (an error, not 0% accuracy)."""


@torch.inference_mode()
def evaluate_model(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    num_classes: int,
    device: str | torch.device = "cpu",
    env: DistEnv = SINGLE_PROCESS,
    chunk: int = 64,
    options: EngineOptions | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent), mean cross-entropy and the confusion matrix over `loader`.

    The loader yields `(images, labels)` or `(images, labels, skipped)` (as `data.collate_labeled` does).
    Images N x C x H x W are one view each; N x K x C x H x W are K crops of each image, whose softmax
    probabilities are averaged (the crops go through the model `chunk` at a time).
    Top-k is capped at `num_classes`, so top-5 of a 3-class problem is top-3 (always 100%; `evaluate` and
    `format_report` leave it out).
    Precision of a class never predicted, and recall of a class absent from the data, are 0.
    Under torchrun each rank passes its shard of the data; the counts are summed over ranks, so every
    rank returns the numbers of the whole data set. `model` is a module or any callable from images to
    logits, such as an `engine.Engine`. With `options`, a module runs as `evaluate` runs saved weights:
    through `build_engine(model, "logits", options)` on `device` (its batch norm folded, so the numbers
    equal `evaluate`'s; the module itself is left as it is).
    """
    device = torch.device(device)
    if options is not None and isinstance(model, nn.Module):
        model = build_engine(model, "logits", engine_options(options, device=str(device)))
    elif isinstance(model, nn.Module):
        model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    k5 = min(5, num_classes)
    correct1 = correct5 = n = skipped = 0
    loss_sum = 0.0
    for batch in loader:
        images, labels = batch[0], batch[1]
        if len(batch) > 2:
            skipped += int(batch[2])
        if labels.numel() == 0:
            continue
        labels = labels.to(device, non_blocking=True)
        if images.dim() == 5:   # N x K crops: log of the mean probability over crops
            views = images.flatten(0, 1)
            probs = torch.cat([model(v.to(device, non_blocking=True)).float().softmax(1).to(device)
                               for v in views.split(chunk)])
            logits = probs.view(images.shape[0], images.shape[1], -1).mean(1).clamp_min(1e-12).log()
        else:
            logits = model(images.to(device, non_blocking=True)).float().to(device)  # N x num_classes
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(k5, dim=1).indices  # N x k5, best first
        hits = top.eq(labels[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        n += labels.numel()
        pairs = (labels * num_classes + top[:, 0]).cpu()
        confusion += torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)
    if env.distributed:
        correct1, correct5, n, skipped, loss_sum = dist_mod.all_reduce(
            [correct1, correct5, n, skipped, loss_sum], env, device)
        correct1, correct5, n, skipped = int(correct1), int(correct5), int(n), int(skipped)
        confusion = confusion.to(device)
        torch.distributed.all_reduce(confusion)
    conf = confusion.cpu().numpy()
    tp = np.diag(conf).astype(np.float64)
    predicted = conf.sum(axis=0)  # column sums: how often each class was predicted
    support = conf.sum(axis=1)  # row sums: how often each class is the truth
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    return {
        "top1": 100.0 * correct1 / n if n else 0.0,
        "top5": 100.0 * correct5 / n if n else 0.0,
        "topk": k5,
        "loss": loss_sum / n if n else float("nan"),
        "n": n,
        "skipped": skipped,
        "confusion": conf,
        "precision": precision,
        "recall": recall,
        "support": support,
    }


def evaluate(
    data: str,
    weights: str,
    split: str = "val",
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    crops: int = 1,
    distributed: bool | None = None,
    precision: str | None = None,
    backend: str | None = None,
    calibration: Calibration = None,
    *,
    options: EngineOptions | None = None,
) -> dict[str, Any]:
    """Evaluate saved weights on a labeled data set ("digits" or an image folder).

    The images are prepared with the model's own preprocessing (`model.meta.preprocess`), and the data's
    class names must match the model's, so that label i means the same class to both. `val_fraction` and
    `seed` must be the ones used in training when a single folder is split (they are ignored for
    "digits", whose split is fixed, and for folders with train/ and val/ sub-folders).
    `crops` > 1 averages over 10, 12 or 144 crops per image (`transforms.MULTI_CROPS`); the batch size then
    counts crops. Under torchrun (`distributed` None means: when torchrun started this process) each rank
    evaluates a contiguous shard and the counts are summed, so every rank returns the whole result.
    `options` (default `EVALUATE_OPTIONS`) say how the engine runs, as for `predict`; the keywords of the
    same names replace single settings.
    """
    if crops not in MULTI_CROPS:
        raise ValueError(f"--crops {crops}: choose one of {', '.join(map(str, MULTI_CROPS))}")
    options = engine_options(options or EVALUATE_OPTIONS, batch_size=batch_size, workers=workers, device=device,
                             precision=precision, backend=backend, calibration=calibration)
    env, dev = dist_mod.start(resolve_device(options.device), distributed)
    options = engine_options(options, device=str(dev))
    model = load_model(weights, device=str(dev))
    meta = model.meta
    transform = multi_crop_transform(meta.preprocess, crops, in_chans=int(getattr(model, "in_chans", 3)))
    dataset = load_labeled(data, split, transform, mode=image_mode(model), val_fraction=val_fraction, seed=seed)
    classes = list(dataset.classes)
    if meta.class_names is not None:
        if list(meta.class_names) != classes:
            raise ValueError(
                f"class names of the model ({weights}: {_preview(meta.class_names)}) do not match the data "
                f"({data}: {_preview(classes)}); evaluate on data with the same class folders, in the same "
                "order"
            )
    elif meta.num_classes != len(classes):
        raise ValueError(
            f"{weights} has {meta.num_classes} classes but {data} has {len(classes)}; "
            "evaluate weights trained on this data"
        )
    elif env.is_main:
        logger.warning("%s carries no class names; assuming they are the data's: %s", weights,
                       _preview(classes))
    shard = torch.utils.data.Subset(dataset, dist_mod.shard_range(len(dataset), env)) if env.distributed \
        else dataset
    engine = build_engine(model, "logits", options, images=len(shard) * crops)
    workers = thread_budget(options)
    loader = labeled_loader(shard, batch_size=max(1, options.batch_size // crops), shuffle=False, workers=workers)
    result = evaluate_model(engine, loader, len(classes), dev, env, chunk=options.batch_size)
    if result["n"] == 0 and result["skipped"]:
        raise NoUsableImages(f"{data}: none of the {result['skipped']} images of the {split} split could be "
                             "read; check the files (inceptionv3 predict lists why each one fails)")
    if result["n"] == 0:
        raise ValueError(f"{data}: the {split} split holds no images; give a folder with images in its "
                         "class folders (or a larger --val-fraction)")
    if result["skipped"] and env.is_main:
        logger.warning("skipped %d unreadable images", result["skipped"])
    if result["topk"] >= len(classes):    # top-k of k classes or fewer is 100% by definition: not reported
        result.update(top5=None, topk=None)
    result.update(class_names=classes, data=data, split=split, weights=str(weights), crops=crops,
                  processes=env.world_size, engine=engine.describe())
    return result


def _preview(names: Sequence[str], k: int = 5) -> str:
    head = ", ".join(map(str, list(names)[:k]))
    return f"{len(names)} classes [{head}{', ...' if len(names) > k else ''}]"


def format_report(result: dict[str, Any], class_names: Sequence[str]) -> str:
    """Top-1/top-5, a per-class precision/recall/support table and (up to 20 classes) the confusion matrix."""
    names = [str(c) for c in class_names]
    k = result.get("topk", min(5, len(names)))
    top_k = f"   top-{k}: {result['top5']:.2f}%" if k and k < len(names) else ""
    lines = [
        f"images: {result['n']}"
        + (f" (skipped {result['skipped']} unreadable)" if result.get("skipped") else ""),
        f"top-1: {result['top1']:.2f}%{top_k}   loss: {result['loss']:.4f}",
        "",
    ]
    width = max([5, *(len(c) for c in names)])
    lines.append(f"{'class':<{width}}  precision  recall  support")
    for i, name in enumerate(names):
        lines.append(
            f"{name:<{width}}  {result['precision'][i]:9.3f}  {result['recall'][i]:6.3f}  "
            f"{int(result['support'][i]):7d}"
        )
    conf = np.asarray(result["confusion"])
    lines.append("")
    if len(names) > MAX_PRINTED_CLASSES:
        lines.append(
            f"confusion matrix: {len(names)} classes are too many to print; "
            "see the --plot image or the JSON output"
        )
        return "\n".join(lines)
    lines.append("confusion matrix (rows: true class, columns: predicted class):")
    if len(names) <= 10:  # few classes: the names themselves head the columns
        header, row_names = names, names
    else:  # more: number the columns to keep the matrix narrow
        header = [str(j) for j in range(len(names))]
        row_names = [f"{j} {c}" for j, c in enumerate(names)]
    cell = max(2, len(str(int(conf.max(initial=0)))), *(len(h) for h in header))
    row_width = max(len(r) for r in row_names)
    lines.append(" " * row_width + "  " + " ".join(f"{h:>{cell}}" for h in header))
    for r, row in zip(row_names, conf):
        lines.append(f"{r:<{row_width}}  " + " ".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Write the confusion matrix (rows normalised to recall, counts printed when it is small) as an image."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plotting the confusion matrix needs matplotlib: pip install 'inceptionv3[plot]'"
        ) from e
    conf = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    if conf.shape != (n, n):
        raise ValueError(f"confusion matrix is {conf.shape}, expected {n} x {n} for {n} class names")
    rows = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros(conf.shape), where=rows > 0)
    side = min(4 + 0.4 * n, 40)
    # Figure + Agg canvas directly (no pyplot): no global backend switch, no figure left open.
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 50:
        ax.set_xticks(range(n), labels=[str(c) for c in class_names], rotation=90)
        ax.set_yticks(range(n), labels=[str(c) for c in class_names])
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:  # temp file beside path, fsync, rename
        fig.savefig(tmp, format=fmt)
