"""Single-process training: the small-data recipe, as small functions a later DDP / resume issue can reuse.

Recipe (works from scratch on a few thousand images, e.g. the embedded digits): AdamW without weight
decay on BN and bias parameters, a one-cycle LR schedule stepped per optimizer step, label smoothing 0.1,
gradient clipping at 2.0, aux loss weighted 0.4 when the aux head is on (only possible at >= 299 px).

A run folder holds: config.json (the TrainConfig, written first), metrics.jsonl (one JSON line per
epoch), last.pt (model + optimizer + scheduler + epoch + config, every epoch) and best.safetensors (the
best held-out top-1 so far, with class names and preprocessing, loadable by `weights.load_model`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from . import data as data_mod
from .evaluate import evaluate_model
from .fileio import atomic_path, write_text_atomic
from .model import AUX_MIN_INPUT_SIZE, build_model
from .runtime import resolve_device, set_compute_threads
from .transforms import Preprocess, eval_transform, train_transform

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "inceptionv3.train-checkpoint/1"
FOLDER_CROP_FRACTION = 0.875  # folders: resize to size / 0.875, center-crop size (the Inception eval crop)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; one field per `inceptionv3 train` flag, saved as config.json."""

    data: str = field(metadata={
        "help": "'digits' or an image folder (class sub-folders, or train/ and val/)"})
    out: str = field(default="runs/train", metadata={"help": "run folder for checkpoints and metrics"})
    arch: str = field(default="inception_v3", metadata={
        "help": "network", "choices": ("inception_v3", "inception_mini")})
    epochs: int = field(default=6, metadata={"help": "passes over the training images"})
    batch_size: int = field(default=32, metadata={"help": "images per optimizer step"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW decay (not on BN or bias parameters)"})
    image_size: int = field(default=75, metadata={
        "help": "input side in pixels (>= 75; the aux head needs >= 299)"})
    weights: str | None = field(default=None, metadata={
        "help": "start from these weights (registry name or file); a new class set gets a fresh classifier"})
    aux_logits: bool | None = field(default=None, metadata={
        "help": "train the aux head (default: on for inception_v3 at >= 299 px)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the cross-entropy"})
    clip_grad: float = field(default=2.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    aux_weight: float = field(default=0.4, metadata={"help": "weight of the aux head's loss"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation, shuffling and augmentation"})
    workers: int | None = field(default=None, metadata={
        "help": "decode worker processes (default: chosen for the core count)"})
    val_fraction: float = field(default=0.2, metadata={
        "help": "held-out share of a single image folder (ignored for digits and train/ + val/ folders)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    threads: int | None = field(default=None, metadata={
        "help": "torch compute threads (default: cores left after the decode workers)"})
    limit: int | None = field(default=None, metadata={"help": "use at most this many training images"})

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "image_size": self.image_size}
        bad = [f"{k}={v!r}" for k, v in positive.items() if not isinstance(v, int) or v < 1]
        if self.lr <= 0 or not math.isfinite(self.lr):
            bad.append(f"lr={self.lr!r}")
        if self.limit is not None and self.limit < 1:
            bad.append(f"limit={self.limit!r}")
        if bad:
            raise ValueError(f"invalid training config: {', '.join(bad)} (must be positive)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error (a typo, or a config from a newer version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a run folder's config.json (or a JSON file of the same form)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_dict(json.loads(path.read_text()))


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf: the run diverged (usually the learning rate is too high)."""


# ---------------------------------------------------------------------------------------------- setup


def resolve_aux(cfg: TrainConfig) -> bool:
    """Whether the aux head is trained: auto = inception_v3 at >= 299 px; an impossible request errors."""
    has_aux = cfg.arch == "inception_v3"
    if cfg.aux_logits is None:
        return has_aux and cfg.image_size >= AUX_MIN_INPUT_SIZE
    if cfg.aux_logits and not has_aux:
        raise ValueError(f"{cfg.arch} has no aux head; leave --aux-logits unset")
    if cfg.aux_logits and cfg.image_size < AUX_MIN_INPUT_SIZE:
        raise ValueError(
            f"the aux head needs --image-size >= {AUX_MIN_INPUT_SIZE} (got {cfg.image_size}); "
            "use --no-aux-logits"
        )
    return bool(cfg.aux_logits)


def preprocess_for(cfg: TrainConfig) -> Preprocess:
    """Eval preprocessing saved with the model: digits are resized whole (an 8x8 image has no border to
    crop); folders get the Inception resize-then-center-crop."""
    resize = cfg.image_size if cfg.data == "digits" else round(cfg.image_size / FOLDER_CROP_FRACTION)
    return Preprocess(input_size=cfg.image_size, resize_size=resize, interpolation="bilinear",
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def augmentation_for(cfg: TrainConfig, pre: Preprocess):
    """Training transform. Digits: a mild crop and no flip (a mirrored 2 or 7 is not a digit).
    Folders: the Inception random-resized crop (scale 0.25-1, milder than 0.08 for small data) + flip."""
    if cfg.data == "digits":
        return train_transform(pre, scale=(0.85, 1.0), ratio=(0.9, 1.1), hflip=False)
    return train_transform(pre, scale=(0.25, 1.0), hflip=True)


def build_datasets(cfg: TrainConfig, pre: Preprocess) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names); `cfg.limit` keeps a seeded random subset of the training images."""
    kw = {"mode": "RGB", "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    train_ds = data_mod.load_labeled(cfg.data, "train", augmentation_for(cfg, pre), **kw)
    val_ds = data_mod.load_labeled(cfg.data, "val", eval_transform(pre), **kw)
    classes = list(train_ds.classes)
    if len(classes) < 2:
        raise ValueError(f"{cfg.data}: found {len(classes)} class; training a classifier needs at least 2")
    if len(val_ds) == 0:
        raise ValueError(f"{cfg.data}: the held-out split is empty; add images or raise --val-fraction")
    if cfg.limit is not None and cfg.limit < len(train_ds):
        g = torch.Generator().manual_seed(cfg.seed)
        keep = torch.randperm(len(train_ds), generator=g)[: cfg.limit].sort().values.tolist()
        train_ds = Subset(train_ds, keep)
    return train_ds, val_ds, classes


def init_model(cfg: TrainConfig, classes: list[str], aux: bool) -> nn.Module:
    """A fresh network, or one started from `cfg.weights`.

    From weights, the backbone is always loaded (strictly: a wrong arch or a damaged file is an error).
    The classifier is kept only when the file's class names equal the data's (continuing a run on the
    same classes); otherwise it is reset, because its outputs would mean other classes. The aux head is
    dropped when it is not trained.
    """
    config = {"num_classes": len(classes), "aux_logits": aux, "in_chans": 3}
    if cfg.weights is None:
        return build_model(cfg.arch, **config)
    from .weights import load_model

    model = load_model(cfg.weights, arch=cfg.arch, **config)
    file_names = model.meta.class_names
    if file_names is not None and list(file_names) == classes:
        logger.info("started from %s, classifier kept (same %d classes)", cfg.weights, len(classes))
    else:
        model.reset_classifier(len(classes))
        why = "no class names in the file" if file_names is None else "other class names in the file"
        logger.info("started from %s: backbone loaded; classifier reset for %d classes (%s)%s",
                    cfg.weights, len(classes), why, "" if aux else "; aux head not used")
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only weight matrices and conv kernels: decaying BN scales and biases only hurts small data."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """AdamW + one-cycle (30% warm-up to cfg.lr, cosine down to cfg.lr / 1e4), stepped per optimizer step."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.3
    )
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------- steps


def compute_loss(logits: torch.Tensor, aux: torch.Tensor | None, labels: torch.Tensor,
                 cfg: TrainConfig) -> torch.Tensor:
    """Label-smoothed cross-entropy, plus the aux head's weighted by cfg.aux_weight."""
    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    if aux is not None:
        loss = loss + cfg.aux_weight * F.cross_entropy(aux, labels, label_smoothing=cfg.label_smoothing)
    return loss


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """One pass over `loader`; returns mean loss, train top-1 (%), last lr, images, skipped and time.

    Raises NonFiniteLossError (step, loss, lr) before a diverged step touches the weights.
    """
    from tqdm.auto import tqdm

    model.train()
    start = time.perf_counter()
    loss_sum, correct, n, skipped, steps = 0.0, 0, 0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False, unit="batch")
    for images, labels, bad in bar:
        skipped += int(bad)
        # BN needs 2+ samples in train mode (Mixed_7c is 1x1 at 75 px); a batch that lost images to
        # decode failures can fall below that and is skipped.
        if labels.numel() < 2:
            continue
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits, aux = model.forward_train(images)
        loss = compute_loss(logits, aux, labels, cfg)
        loss_value = loss.item()
        lr = optimizer.param_groups[0]["lr"]
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at epoch {epoch}, step {steps + 1} (lr {lr:.3g}); training stopped "
                f"and the checkpoints of earlier epochs are kept. Lower --lr (now {cfg.lr:g}) or check the "
                "data."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        scheduler.step()
        steps += 1
        k = labels.numel()
        loss_sum += loss_value * k
        correct += int((logits.detach().argmax(1) == labels).sum())
        n += k
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", refresh=False)
    bar.close()
    return {
        "loss": loss_sum / n if n else float("nan"),
        "acc1": 100.0 * correct / n if n else 0.0,
        "lr": lr,
        "images": n,
        "skipped": skipped,
        "steps": steps,
        "seconds": time.perf_counter() - start,
    }


def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
    """Held-out metrics for the epoch line (top-1/top-5 in %, loss, skipped images)."""
    r = evaluate_model(model, loader, num_classes, device)
    return {k: r[k] for k in ("top1", "top5", "loss", "n", "skipped")}


# ---------------------------------------------------------------------------------------------- files


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save `state` atomically (temp file, fsync, rename): a crash never leaves a torn last.pt."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A last.pt written by `train`, read without running pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- run


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train per `cfg`; returns {"best_acc1", "history", "best_path", "last_path", "config"}.

    Held-out top-1 is measured after every epoch; the best epoch's weights go to best.safetensors.
    """
    from .weights import save_model

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    aux = resolve_aux(cfg)
    device = resolve_device(cfg.device)
    workers = cfg.workers if cfg.workers is not None else data_mod.default_workers()
    previous_threads = torch.get_num_threads()
    threads = set_compute_threads(workers, cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        pre = preprocess_for(cfg)
        train_ds, val_ds, classes = build_datasets(cfg, pre)
        write_text_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        metrics_path = out / "metrics.jsonl"
        metrics_path.unlink(missing_ok=True)  # a new run; resuming (later) will append instead

        drop_last = len(train_ds) > cfg.batch_size  # a tiny last batch is noisy and can break BN
        train_loader = data_mod.labeled_loader(train_ds, cfg.batch_size, shuffle=True, workers=workers,
                                               seed=cfg.seed, drop_last=drop_last)
        val_loader = data_mod.labeled_loader(val_ds, cfg.batch_size, shuffle=False, workers=workers)
        model = init_model(cfg, classes, aux).to(device)
        optimizer, scheduler = build_optimizer(model, cfg, len(train_loader))
        logger.info(
            "training %s on %s: %d train / %d held-out images, %d classes, %d px%s, %d epochs x %d steps, "
            "device %s, %d threads, %d workers",
            cfg.arch, cfg.data, len(train_ds), len(val_ds), len(classes), cfg.image_size,
            " + aux head" if aux else "", cfg.epochs, len(train_loader), device, threads, workers,
        )
        meta = {"arch": cfg.arch, "model_config": dict(model.config), "num_classes": len(classes),
                "class_names": classes, "preprocess": pre.to_dict()}
        best_path, last_path = out / "best.safetensors", out / "last.pt"
        best_acc1, history = -1.0, []
        for epoch in range(1, cfg.epochs + 1):
            tr = train_one_epoch(model, train_loader, optimizer, scheduler, cfg, device, epoch, progress)
            va = evaluate(model, val_loader, len(classes), device)
            record = {
                "epoch": epoch, "train_loss": tr["loss"], "train_acc1": tr["acc1"], "lr": tr["lr"],
                "val_loss": va["loss"], "val_acc1": va["top1"], "val_acc5": va["top5"],
                "skipped": tr["skipped"] + va["skipped"], "seconds": tr["seconds"],
            }
            history.append(record)
            _append_jsonl(metrics_path, record)
            improved = va["top1"] > best_acc1
            if improved:
                best_acc1 = va["top1"]
                save_model(model, best_path, class_names=classes, preprocess=pre,
                           extra={"epoch": epoch, "acc1": va["top1"], "acc5": va["top5"]})
            save_checkpoint(last_path, {
                "format": CHECKPOINT_FORMAT, "model": _state_dict(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "best_acc1": best_acc1,
                "config": cfg.to_dict(), "class_names": classes, "meta": meta,
            })
            logger.info(
                "epoch %d/%d  loss %.4f  train top-1 %.2f%%  held-out top-1 %.2f%% top-5 %.2f%%  lr %.2e  "
                "%.1fs%s%s",
                epoch, cfg.epochs, tr["loss"], tr["acc1"], va["top1"], va["top5"], tr["lr"], tr["seconds"],
                f"  skipped {record['skipped']} bad images" if record["skipped"] else "",
                "  (best)" if improved else "",
            )
    finally:
        torch.set_num_threads(previous_threads)
    return {"best_acc1": best_acc1, "history": history, "best_path": str(best_path),
            "last_path": str(last_path), "config": cfg.to_dict()}
