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

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from . import data as data_mod
from . import distributed as dist_mod
from .checkpoint import (  # noqa: F401 - re-exported: the API of train
    CHECKPOINT_FORMAT,
    CheckpointError,
    checkpoint_candidates,
    latest_good_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from .distributed import DistEnv
from .evaluate import evaluate_model
from .fileio import write_text_atomic
from .model import AUX_MIN_INPUT_SIZE, build_model
from .runtime import available_cores, resolve_device, set_compute_threads
from .transforms import Preprocess, eval_transform, train_transform

logger = logging.getLogger(__name__)

FOLDER_CROP_FRACTION = 0.875  # folders: resize to size / 0.875, center-crop size (the Inception eval crop)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; one field per `inceptionv3 train` flag, saved as config.json."""

    data: str = field(metadata={
        "help": "'digits', an image folder (class sub-folders, or train/ and val/), or a .csv/.jsonl list "
                "of path,label (or a folder with train.csv and val.csv)"})
    out: str = field(default="runs/train", metadata={"help": "run folder for checkpoints and metrics"})
    arch: str = field(default="inception_v3", metadata={
        "help": "network", "choices": ("inception_v3", "inception_mini")})
    epochs: int = field(default=6, metadata={"help": "passes over the training images"})
    batch_size: int = field(default=32, metadata={
        "help": "images per optimizer step over all processes (under torchrun each takes an equal share)"})
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
    dropout: float | None = field(default=None, metadata={
        "help": "dropout before the classifier (default: the network's, 0.5)"})
    balanced: bool = field(default=False, metadata={
        "help": "draw every class equally often (with replacement), for imbalanced data"})
    augment: bool = field(default=True, metadata={
        "help": "random crops (and flips for folders) while training"})
    resume: str | None = field(default=None, metadata={
        "help": "continue the run in this folder from its latest good checkpoint (give the run's own flags)"})
    save_every: int = field(default=0, metadata={
        "help": "also checkpoint every this many steps inside an epoch (0: at epoch ends only)"})
    save_minutes: float = field(default=0.0, metadata={
        "help": "also checkpoint inside an epoch once this many minutes passed since the last one (0: off)"})
    keep_last: int = field(default=3, metadata={
        "help": "keep this many recent checkpoints in checkpoints/ besides last.pt and best.safetensors"})
    deterministic: bool = field(default=False, metadata={
        "help": "deterministic kernels, so a resumed run ends with the weights of an uninterrupted one"})
    skip_nonfinite: bool = field(default=False, metadata={
        "help": "skip (and count) steps whose loss is NaN/Inf instead of stopping"})
    sync_bn: bool = field(default=False, metadata={
        "help": "under torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)"})
    freeze_until: str | None = field(default=None, metadata={
        "help": "freeze the network from the input up to and including this block (e.g. Mixed_6e; "
                "'all': the whole backbone); frozen batch norms stay in eval mode"})
    amp: str = field(default="auto", metadata={
        "help": "mixed precision: auto (bf16 where the device computes it natively: CPUs with AMX or "
                "AVX512-BF16, CUDA GPUs with bf16; fp32 elsewhere), bf16 autocast, fp16 autocast with a "
                "gradient scaler (for GPUs), or off; weights and optimizer stay fp32",
        "choices": ("auto", "off", "bf16", "fp16")})
    accum_steps: int = field(default=1, metadata={
        "help": "split each step's batch into this many micro-batches, accumulating gradients (less memory, "
                "same step; batch-norm statistics are then per micro-batch)"})
    channels_last: bool = field(default=True, metadata={
        "help": "NHWC memory layout (faster convolutions on recent CPUs and GPUs)"})
    grad_checkpointing: bool = field(default=False, metadata={
        "help": "recompute the Mixed blocks' activations in the backward pass instead of keeping them "
                "(less memory, so larger batches fit; a step took 14% longer in benchmarks/bench_train.py)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the training forward (slow to start; pays off on long runs)"})
    compile_backend: str = field(default="inductor", metadata={
        "help": "torch.compile backend for --compile (aot_eager: no C++ compiler needed)"})
    recipe: str | None = field(default=None, metadata={
        "help": "named preset (see RECIPES) for the flags left at their defaults; explicit flags win",
        "choices": ("paper", "finetune", "linear-probe")})
    optimizer: str = field(default="adamw", metadata={
        "help": "adamw; rmsprop (decay 0.9, eps 1.0, momentum 0.9, as in the paper); sgd (momentum 0.9, "
                "nesterov)",
        "choices": ("adamw", "rmsprop", "sgd")})
    schedule: str = field(default="onecycle", metadata={
        "help": "onecycle; step (x0.94 every 2 epochs, the paper's); cosine (to 0)",
        "choices": ("onecycle", "step", "cosine")})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "linear LR warm-up before the step or cosine schedule (one-cycle has its own)"})
    backbone_lr_scale: float = field(default=1.0, metadata={
        "help": "the backbone's LR relative to the head's (fc, aux): < 1 when fine-tuning"})
    ema_decay: float = field(default=0.0, metadata={
        "help": "keep an exponential moving average of the weights with this per-step decay, and evaluate "
                "and save it as best (0: off)"})
    crop_scale: float | None = field(default=None, metadata={
        "help": "smallest crop area of the random-resized crop (default: 0.85 digits, 0.25 folders)"})
    strict: bool = field(default=False, metadata={
        "help": "with --weights: stop with an error instead of starting a fresh classifier when the file's "
                "classifier does not fit the data's classes"})
    cache_features: bool = field(default=True, metadata={
        "help": "linear probe (--freeze-until all, --no-augment, no aux head, no EMA): compute the frozen "
                "backbone's features once and train the head on them every epoch"})

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "image_size": self.image_size,
                    "accum_steps": self.accum_steps}
        bad = [f"{k}={v!r}" for k, v in positive.items() if not isinstance(v, int) or v < 1]
        if self.lr <= 0 or not math.isfinite(self.lr):
            bad.append(f"lr={self.lr!r}")
        if self.limit is not None and self.limit < 1:
            bad.append(f"limit={self.limit!r}")
        if self.save_every < 0 or self.keep_last < 0 or self.save_minutes < 0:
            bad.append(f"save_every={self.save_every!r}, save_minutes={self.save_minutes!r}, "
                       f"keep_last={self.keep_last!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            bad.append(f"dropout={self.dropout!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            bad.append(f"ema_decay={self.ema_decay!r}")
        if self.warmup_epochs < 0 or self.backbone_lr_scale < 0:
            bad.append(f"warmup_epochs={self.warmup_epochs!r}, backbone_lr_scale={self.backbone_lr_scale!r}")
        if self.crop_scale is not None and not 0.0 < self.crop_scale <= 1.0:
            bad.append(f"crop_scale={self.crop_scale!r}")
        if bad:
            raise ValueError(f"invalid training config: {', '.join(bad)} "
                             "(sizes must be positive, counts >= 0, dropout and ema_decay in [0, 1))")

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


# Named presets: each sets the fields it lists, unless the field was given a non-default value.
PAPER_LR, PAPER_BATCH = 0.045, 1600
RECIPES: dict[str, dict[str, Any]] = {
    # Szegedy et al. 2016, section 8: RMSProp (decay 0.9, eps 1.0; momentum 0.9), lr 0.045 x0.94 every 2
    # epochs (scaled with the global batch relative to the paper's 1,600, after a warm-up), clipping at 2.0, label
    # smoothing 0.1, aux head weighted 0.4, weight decay 4e-5, crops of 8-100% of the area + flips, 299 px,
    # and an exponential moving average of the weights for evaluation.
    "paper": {"optimizer": "rmsprop", "schedule": "step", "lr": PAPER_LR, "warmup_epochs": 2.0,
              "clip_grad": 2.0, "label_smoothing": 0.1, "aux_weight": 0.4, "weight_decay": 4e-5,
              "image_size": 299, "crop_scale": 0.08, "ema_decay": 0.9999},
    # From weights: a new head at the full LR, the backbone at a tenth; SGD + cosine after a short warm-up.
    "finetune": {"optimizer": "sgd", "schedule": "cosine", "lr": 0.01, "backbone_lr_scale": 0.1,
                 "warmup_epochs": 1.0, "weight_decay": 1e-4},
    # Only the head trains (backbone frozen, its batch norms in eval mode), on unaugmented images, so the
    # backbone's features are computed once and reused every epoch (`cache_features`).
    "linear-probe": {"freeze_until": "all", "optimizer": "adamw", "schedule": "cosine", "lr": 0.01,
                     "weight_decay": 0.0, "augment": False, "aux_logits": False},
}


def resolve_recipe(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its recipe's values for every field still at the default (explicit flags win).

    The paper's LR is scaled linearly with the global batch: 0.045 x batch_size / 1600. A flag given
    with exactly the default value cannot be told from no flag; the recipe's value is used then.
    """
    if cfg.recipe is None:
        return cfg
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) == defaults[k]}
    if cfg.recipe == "paper" and "lr" in values:
        values["lr"] = PAPER_LR * cfg.batch_size / PAPER_BATCH
    return dataclasses.replace(cfg, **values)


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
    Folders: the Inception random-resized crop (scale 0.25-1, milder than 0.08 for small data) + flip.
    `--no-augment`: the eval transform."""
    if not cfg.augment:
        return eval_transform(pre)
    if cfg.data == "digits":
        return train_transform(pre, scale=(cfg.crop_scale or 0.85, 1.0), ratio=(0.9, 1.1), hflip=False)
    return train_transform(pre, scale=(cfg.crop_scale or 0.25, 1.0), hflip=True)


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


def class_balanced_weights(dataset: Dataset) -> list[float]:
    """Per-image sampling weights 1 / (images of its class): every class is drawn equally often."""
    if isinstance(dataset, Subset):
        targets = [dataset.dataset.targets[i] for i in dataset.indices]
    else:
        targets = list(dataset.targets)
    counts: dict[int, int] = {}
    for y in targets:
        counts[y] = counts.get(y, 0) + 1
    return [1.0 / counts[y] for y in targets]


def init_model(cfg: TrainConfig, classes: list[str], aux: bool) -> nn.Module:
    """A fresh network, or one started from `cfg.weights`.

    From weights, the backbone is always loaded (strictly: a wrong arch or a damaged file is an error).
    The classifier is kept only when the file's class names equal the data's (continuing a run on the
    same classes); otherwise it is reset, because its outputs would mean other classes. The aux head is
    dropped when it is not trained.
    """
    config = {"num_classes": len(classes), "aux_logits": aux, "in_chans": 3}
    if cfg.dropout is not None:
        config["dropout"] = cfg.dropout
    if cfg.weights is None:
        return build_model(cfg.arch, **config)
    from .weights import load_model

    # --strict loads the file's own classifier first, so that a misfit can be described before anything
    # is re-initialised.
    kept = {k: v for k, v in config.items() if k != "num_classes"} if cfg.strict else config
    model = load_model(cfg.weights, arch=cfg.arch, **kept)
    file_names = model.meta.class_names
    if file_names is not None and list(file_names) == classes:
        logger.info("started from %s, classifier kept (same %d classes)", cfg.weights, len(classes))
    else:
        why = "no class names in the file" if file_names is None else "other class names in the file"
        if cfg.strict:
            theirs = (f"{model.num_classes} unnamed classes" if file_names is None
                      else f"{len(file_names)} classes {_preview(list(file_names))}")
            raise ValueError(f"--weights {cfg.weights}: its classifier does not fit the data (the file has "
                             f"{theirs}; the data has {len(classes)} classes {_preview(classes)}). Drop "
                             "--strict to start a fresh classifier, or train on data with the file's classes")
        model.reset_classifier(len(classes))
        logger.info("started from %s: backbone loaded; classifier reset for %d classes (%s)%s",
                    cfg.weights, len(classes), why, "" if aux else "; aux head not used")
    return model


def _preview(names: list[str], n: int = 5) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return f"[{', '.join(names[:n])}{more}]"


HEAD_MODULES = ("AuxLogits", "fc")   # never frozen by --freeze-until: they are what fine-tuning trains


def trunk_blocks(net: nn.Module) -> list[str]:
    """The network's blocks with parameters, input first (Conv2d_1a_3x3 ... Mixed_7c; conv1 ...)."""
    return [name for name, m in net.named_children()
            if name not in HEAD_MODULES and any(True for _ in m.parameters())]


def frozen_blocks(net: nn.Module, block: str | None) -> list[str]:
    """The blocks `--freeze-until block` freezes; an unknown name is an error listing the known ones."""
    if block is None:
        return []
    names = trunk_blocks(net)
    if block == "all":   # the whole backbone: a linear probe
        return names
    if block not in names:
        raise ValueError(f"--freeze-until {block}: no such block; one of {', '.join(names)}, or all")
    return names[: names.index(block) + 1]


def freeze(net: nn.Module, block: str | None) -> list[str]:
    """Stop gradients into the blocks up to `block` (inclusive); returns their names."""
    names = frozen_blocks(net, block)
    for name in names:
        for p in getattr(net, name).parameters():
            p.requires_grad_(False)
    return names


def set_train_mode(model: nn.Module, cfg: TrainConfig) -> None:
    """Train mode, except frozen blocks: their batch norms keep using (and keeping) the running stats."""
    model.train()
    net = _network(model)
    for name in frozen_blocks(net, cfg.freeze_until):
        getattr(net, name).eval()


def prepare_model(net: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The network as training runs it: on `device`, NHWC (`channels_last`), its Mixed blocks recomputed in
    the backward pass (`grad_checkpointing`). The benchmark uses this too, so it measures what trains."""
    net = net.to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        if not hasattr(net, "set_grad_checkpointing"):
            raise ValueError(f"--grad-checkpointing: {cfg.arch} has no Mixed blocks to checkpoint; "
                             "use --arch inception_v3 or leave it off")
        net.set_grad_checkpointing(True)
    return net


def compile_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """`--compile`: torch.compile of the training forward (the DDP wrapper itself under torchrun, so that
    its gradient buckets are split at graph breaks); the returned module's forward gives (logits, aux)."""
    if not cfg.compile:
        return model
    target = model if isinstance(model, nn.parallel.DistributedDataParallel) else dist_mod.TrainForward(model)
    return torch.compile(target, backend=cfg.compile_backend)


def _network(model: nn.Module) -> nn.Module:
    """The network inside the compile and DDP wrappers."""
    return dist_mod.unwrap(getattr(model, "_orig_mod", model))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only weight matrices and conv kernels: decaying BN scales and biases only hurts small data."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """`param_groups` split into backbone and head (fc, AuxLogits), each with its own lr."""
    head = {id(p) for name in HEAD_MODULES if getattr(model, name, None) is not None
            for p in getattr(model, name).parameters()}
    groups = []
    for g in param_groups(model, cfg.weight_decay):
        for is_head in (False, True):
            params = [p for p in g["params"] if (id(p) in head) == is_head]
            if params:
                lr = cfg.lr if is_head else cfg.lr * cfg.backbone_lr_scale
                groups.append({"params": params, "weight_decay": g["weight_decay"], "lr": lr})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """Optimizer and LR schedule, both stepped per optimizer step.

    Default: AdamW + one-cycle (30% warm-up to cfg.lr, cosine down to cfg.lr / 1e4). `step` is the
    paper's x0.94 every 2 epochs, `cosine` decays to 0; both after `warmup_epochs` of linear warm-up.
    """
    groups = lr_groups(model, cfg)
    if cfg.optimizer == "rmsprop":
        # With eps = 1.0 the denominator is ~1 for small gradients, so the update is close to SGD's; the
        # paper's TensorFlow setup adds momentum 0.9 (without it a scaled-down lr barely moves the weights).
        optimizer = torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1.0, momentum=0.9)
    elif cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in groups], total_steps=total, pct_start=0.3)
        return optimizer, scheduler
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    decay_every = 2 * steps_per_epoch

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if cfg.schedule == "step":
            return warm * 0.94 ** (step // decay_every)
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------- steps


def compute_loss(logits: torch.Tensor, aux: torch.Tensor | None, labels: torch.Tensor,
                 cfg: TrainConfig) -> torch.Tensor:
    """Label-smoothed cross-entropy, plus the aux head's weighted by cfg.aux_weight."""
    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    if aux is not None:
        loss = loss + cfg.aux_weight * F.cross_entropy(aux, labels, label_smoothing=cfg.label_smoothing)
    return loss


@dataclass
class EpochState:
    """Where an epoch is and what it has summed so far (this rank's share); saved in mid-epoch checkpoints.

    `step` counts batches taken from the sampler (its position), including skipped ones.
    """

    epoch: int = 1
    step: int = 0
    updates: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    n: int = 0
    skipped: int = 0
    nonfinite: int = 0
    bad_images: list[list[str]] = field(default_factory=list)   # [path, reason] of each skipped image
    lr: float = float("nan")
    seconds: float = 0.0
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ModelEma:
    """Exponential moving average of a network's weights and BN statistics, evaluated and saved as best.

    The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates, so that short runs (and the
    first steps of long ones) are not dominated by the random initialisation.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, v in zip(self.module.state_dict().values(), net.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(v, 1.0 - d)
            else:
                e.copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": _state_dict(self.module)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.decay, self.updates = state["decay"], state["updates"]


class HeadOnly(nn.Module):
    """A network's classifier head (dropout, fc) over pooled features: what a cached linear probe trains.

    It shares the network's `dropout` and `fc` modules, so training it trains the network's head."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.dropout, self.fc = net.dropout, net.fc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))   # N x num_features -> N x num_classes

    def forward_train(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.forward(features), None


class CachedFeatures(Dataset):
    """Pooled backbone features of a dataset, computed once: item `i` or `(epoch, i)` -> (features, label),
    or the `BadImage` (None when unknown) of an image that failed to decode."""

    def __init__(self, features: torch.Tensor, labels: list[int], bad: dict[int, Any]) -> None:
        self.features, self.labels, self.bad = features, labels, bad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]):
        i = item[1] if isinstance(item, tuple) else item
        if i in self.bad:
            return self.bad[i]
        return self.features[i], self.labels[i]


def caches_features(cfg: TrainConfig, aux: bool) -> bool:
    """Whether the backbone's features can be computed once and reused every epoch: the backbone is
    frozen (in eval mode), the images are not randomly augmented, and only the final head trains."""
    return (cfg.cache_features and cfg.freeze_until == "all" and not cfg.augment and not aux
            and cfg.ema_decay == 0)


def _as_list(batch: list) -> list:
    return batch


@torch.no_grad()
def backbone_features(net: nn.Module, dataset: Dataset, cfg: TrainConfig, device: torch.device,
                      workers: int, env: DistEnv = dist_mod.SINGLE_PROCESS) -> CachedFeatures:
    """Every image's pooled features (N x num_features, fp32 on the CPU) through the frozen backbone in
    eval mode, as training would compute them (same autocast and layout). Under torchrun each rank
    computes every N-th image and all ranks get the whole set."""
    net.eval()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    mine = list(range(env.rank, len(dataset), env.world_size))
    # Its own generator: a loader without one draws its seed from the global RNG, which the dropout masks
    # of the head's training then would not get.
    loader = torch.utils.data.DataLoader(Subset(dataset, mine), batch_size=cfg.batch_size, num_workers=workers,
                                         collate_fn=_as_list, generator=torch.Generator())
    rows: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    bad: dict[int, Any] = {}
    at = 0
    for batch in loader:
        index = mine[at: at + len(batch)]
        at += len(batch)
        good = [(i, item) for i, item in zip(index, batch) if isinstance(item, tuple)]
        bad.update((i, item) for i, item in zip(index, batch) if not isinstance(item, tuple))
        if not good:
            continue
        x = torch.stack([item[0] for _, item in good]).to(device, memory_format=layout)
        with _autocast(device, cfg.amp):
            pooled = net.forward_head(net.forward_features(x), pre_logits=True)
        for (i, (_, y)), f in zip(good, pooled.float().cpu()):
            rows[i], labels[i] = f, y
    for part in dist_mod.gather_objects((rows, labels, bad), env) if env.distributed else []:
        rows.update(part[0])
        labels.update(part[1])
        bad.update(part[2])
    width = net.num_features
    features = torch.zeros(len(dataset), width)
    for i, f in rows.items():
        features[i] = f
    all_labels = [labels.get(i, -1) for i in range(len(dataset))]
    return CachedFeatures(features, all_labels, bad)


class SeededSamples(Dataset):
    """Items `(epoch, index)` -> `dataset[index]` with torch's RNG seeded from (seed, epoch, index).

    Each sample's augmentation then depends on nothing but the run seed, the epoch and the sample: not
    on the worker that decodes it, the rank that trains on it, or whether the run was resumed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        epoch, i = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.dataset[i]


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int = 1,
    progress: bool = True,
    *,
    state: EpochState | None = None,
    env: DistEnv = dist_mod.SINGLE_PROCESS,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[EpochState], None] | None = None,
    ema: ModelEma | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """One pass over `loader`; returns mean loss, train top-1 (%), last lr, images, skipped and time.

    Raises NonFiniteLossError (step, loss, lr) before a diverged step touches the weights, unless
    `cfg.skip_nonfinite`, which skips the step and counts it. `state` continues a resumed epoch;
    `on_step` runs after every batch (checkpoints); `should_stop()` true ends the epoch after the
    current step with `stopped` set. Under torchrun every decision to skip or stop is agreed by all
    ranks, and the returned sums are over all ranks.
    """
    from tqdm.auto import tqdm

    set_train_mode(model, cfg)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    st = state if state is not None else EpochState(epoch=epoch)
    start = time.perf_counter() - st.seconds
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False, unit="batch")
    net = _network(model)
    for group in _chunks(bar, cfg.accum_steps):   # accum_steps loader batches make one optimizer step
        st.skipped += sum(int(bad) for _, _, bad in group)
        st.bad_images += [[b.path, b.reason] for _, _, bad in group for b in getattr(bad, "images", ())]
        st.step += 1
        # BN needs 2+ samples in train mode (Mixed_7c is 1x1 at 75 px); a batch that lost images to
        # decode failures can fall below that and is skipped (by every rank, or DDP would hang).
        small = any(labels.numel() < 2 for _, labels, _ in group)
        (too_small,) = dist_mod.all_reduce([float(small)], env, device, op="max")
        if too_small:
            st.stopped = bool(should_stop and should_stop())
            if on_step:
                on_step(st)
            if st.stopped:
                break
            continue
        total = sum(labels.numel() for _, labels, _ in group)
        optimizer.zero_grad(set_to_none=True)
        loss_value, correct = 0.0, 0
        for j, (images, labels, _) in enumerate(group):
            # (a cached linear probe's batches are N x features: no layout to choose)
            images = images.to(device, non_blocking=True,
                               memory_format=layout if images.dim() == 4 else torch.contiguous_format)
            labels = labels.to(device, non_blocking=True)
            # Under DDP the gradients are all-reduced once, in the last micro-batch's backward.
            last = j == len(group) - 1
            sync = last or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                with _autocast(device, cfg.amp):
                    # DDP and compiled models wrap forward_train: calling them gives the tuple too.
                    logits, aux = net.forward_train(images) if model is net else model(images)
                    loss = compute_loss(logits, aux, labels, cfg) * (labels.numel() / total)
                # A non-finite loss only makes gradients that are dropped below.
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_value += loss.item()
            correct += int((logits.detach().argmax(1) == labels).sum())
        st.lr = optimizer.param_groups[0]["lr"]
        nonfinite, stop = dist_mod.all_reduce(
            [float(not math.isfinite(loss_value)), float(bool(should_stop and should_stop()))],
            env, device, op="max")
        st.stopped = bool(stop)
        if nonfinite:
            optimizer.zero_grad(set_to_none=True)
            where = f"epoch {epoch}, step {st.step} (lr {st.lr:.3g})"
            if not cfg.skip_nonfinite:
                raise NonFiniteLossError(
                    f"loss is {loss_value} at {where}; training stopped and the checkpoints of earlier "
                    f"steps are kept. Lower --lr (now {cfg.lr:g}), check the data, or pass "
                    "--skip-nonfinite to skip such steps."
                )
            st.nonfinite += 1
            logger.warning("loss is %s at %s: step skipped (%d so far)", loss_value, where, st.nonfinite)
        else:
            if scaler is not None:
                scaler.unscale_(optimizer)   # clip the true gradients
            if cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
            stepped = True
            if scaler is None:
                optimizer.step()
            else:   # fp16: the scaler skips steps whose gradients overflowed, and lowers its scale
                scale = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                stepped = scaler.get_scale() >= scale
            if stepped:
                scheduler.step()
                if ema is not None:
                    ema.update(net)
            st.updates += 1
            st.loss_sum += loss_value * total
            st.correct += correct
            st.n += total
        st.seconds = time.perf_counter() - start
        images_per_s = st.n * env.world_size / st.seconds if st.seconds > 0 else 0.0   # ranks: about equal
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{st.lr:.2e}", img_s=f"{images_per_s:.1f}",
                        refresh=False)
        if on_step:
            on_step(st)
        if st.stopped:
            break
    bar.close()
    st.seconds = time.perf_counter() - start
    bad_images = [b for rank in dist_mod.gather_objects(st.bad_images, env) for b in rank]
    loss_sum, correct, n, skipped = dist_mod.all_reduce(
        [st.loss_sum, float(st.correct), float(st.n), float(st.skipped)], env, device)
    return {
        "loss": loss_sum / n if n else float("nan"),
        "acc1": 100.0 * correct / n if n else 0.0,
        "lr": st.lr if math.isfinite(st.lr) else optimizer.param_groups[0]["lr"],
        "images": int(n),
        "skipped": int(skipped),
        "bad_images": bad_images,
        "steps": st.updates,
        "nonfinite": st.nonfinite,
        "seconds": st.seconds,
        "stopped": st.stopped,
    }


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: CUDA GPUs with bf16 (Ampere on), CPUs with AMX or
    AVX512-BF16 instructions. Elsewhere bf16 is emulated and no faster than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)   # cpuinfo's answers (torch >= 2.8)
    if capabilities is not None:
        caps = capabilities()
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def resolve_amp(amp: str, device: torch.device) -> str:
    """`--amp auto` -> "bf16" where the device has native bf16, else "off"; other values as given.

    bf16 keeps fp32's exponent range, so it needs no loss scaling; on the digits it keeps the accuracy
    target (within 3 of 450 held-out images of fp32; see the README). fp16 is never chosen automatically."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "off"


def _autocast(device: torch.device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_amp(amp, device))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _chunks(items, k: int) -> Iterator[list]:
    group = []
    for item in items:
        group.append(item)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device, amp: str = "off",
             env: DistEnv = dist_mod.SINGLE_PROCESS) -> dict[str, Any]:
    """Held-out metrics for the epoch line (top-1/top-5 in %, loss, skipped images, confusion matrix as
    nested lists: rows true class, columns predicted).

    Under torchrun each rank passes a loader over its shard (`shard`) and gets the totals over all."""
    net = _network(model)
    with _autocast(device, amp):
        r = evaluate_model(net, loader, num_classes, device)
    if not env.distributed:
        return {**{k: r[k] for k in ("top1", "top5", "loss", "n", "skipped")},
                "confusion": r["confusion"].tolist()}
    n = r["n"]
    top1, top5, loss, n, skipped = dist_mod.all_reduce(
        [round(r["top1"] * n / 100), round(r["top5"] * n / 100), r["loss"] * n if n else 0.0, n,
         r["skipped"]], env, device)
    confusion = dist_mod.all_reduce(r["confusion"].reshape(-1).tolist(), env, device)
    k = num_classes
    return {"top1": 100.0 * top1 / n if n else 0.0, "top5": 100.0 * top5 / n if n else 0.0,
            "loss": loss / n if n else float("nan"), "n": int(n), "skipped": int(skipped),
            "confusion": [[int(v) for v in confusion[i * k: (i + 1) * k]] for i in range(k)]}


def shard(dataset: Dataset, env: DistEnv) -> Dataset:
    """This rank's share of an evaluation set: items rank, rank + N, ... (all of it for one process)."""
    if not env.distributed:
        return dataset
    return Subset(dataset, range(env.rank, len(dataset), env.world_size))


# Fields a resumed run may change: where and how it runs, not what it computes.
RESUME_MAY_CHANGE = ("out", "resume", "workers", "threads", "device", "save_every", "save_minutes",
                     "keep_last", "deterministic", "skip_nonfinite", "grad_checkpointing", "compile",
                     "compile_backend", "cache_features")


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A resumed run must compute what the saved run computed; list every field that differs."""
    now = cfg.to_dict()
    diff = [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {now[k]!r})"
            for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if diff:
        raise ValueError(f"--resume {cfg.resume}: that run was started with other settings: "
                         f"{'; '.join(diff)}. "
                         f"Resume with the run's own flags (its config.json), or start a new run in "
                         "another --out folder")


def rng_state() -> dict[str, Any]:
    """This process's random generators (torch CPU and CUDA, numpy, random), checkpoint-friendly."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _read_history(path: Path, epochs: int) -> list[dict[str, Any]]:
    """metrics.jsonl's records of the first `epochs` epochs (for checkpoints from before 'history')."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("epoch", 0) <= epochs]


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- run


class PeerLostError(ConnectionError):
    """Under torchrun, another rank died (or its machine did): this rank stops without writing anything."""


def _lost_peer(e: BaseException) -> bool:
    """Whether `e` is a collective failing because a peer process went away (gloo, NCCL, the store)."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(e)
    return isinstance(e, dist_error) or any(s in text for s in (
        "Connection reset by peer", "Connection closed by peer", "gloo", "NCCL", "Broken pipe"))


def _first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else line[:200] + "..."


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT: the current step finished, a checkpoint was written; the message says how to resume."""


class _StopRequest:
    """Signal handler: the first SIGINT/SIGTERM asks the loop to stop after the current step; a second
    SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop   # signal handlers can only be installed from the main thread
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _determinism(on: bool) -> Iterator[None]:
    """Deterministic kernels for the run (`--deterministic`); the global switches are restored after."""
    if not on:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS needs it for reproducible GEMMs
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.benchmark, cudnn.deterministic)
    torch.use_deterministic_algorithms(True, warn_only=True)   # warn, not fail, on ops without one
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic = before[2], before[3]


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


def _recording_bad(loader, into: list[list[str]]) -> Iterator:
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


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train per `cfg`; returns {"best_acc1", "history", "best_path", "last_path", "config"}.

    Held-out top-1 is measured after every epoch; the best epoch's weights go to best.safetensors.
    Under torchrun this is one rank of a DistributedDataParallel run (only rank 0 writes files).
    SIGTERM/SIGINT end it after the current step with a checkpoint, raising TrainingInterrupted.
    """
    given, cfg = cfg, resolve_recipe(cfg)
    device = resolve_device(cfg.device)
    env = dist_mod.env_from_environ()
    if cfg.recipe == "paper" and cfg.lr != given.lr and cfg.batch_size < 256 and env.rank == 0:
        # Measured on the digits: 9e-4 (batch 32) reaches 57% in 30 epochs, 0.045 reaches 99% in 8.
        logger.info("recipe paper: lr %g x %d / %d = %.2g (scaled to the global batch); on a small "
                    "dataset this learns slowly: --lr %g is the paper's rate for a batch of 32",
                    PAPER_LR, cfg.batch_size, PAPER_BATCH, cfg.lr, PAPER_LR)
    device = dist_mod.local_device(device, env)
    owns_group = env.distributed and not (
        torch.distributed.is_available() and torch.distributed.is_initialized())
    workers = cfg.workers if cfg.workers is not None else data_mod.default_workers()
    threads = cfg.threads
    if threads is None and env.distributed and not os.environ.get("INCEPTIONV3_NUM_THREADS"):
        threads = max(1, available_cores() - workers)  # torchrun's local processes share the cores
    previous_threads = torch.get_num_threads()
    set_compute_threads(workers, threads)
    try:
        env = dist_mod.setup(device)
        with _determinism(cfg.deterministic), _stop_on_signals() as stop:
            try:
                return _train(cfg, env, device, workers, stop, progress)
            except Exception as e:
                if not (env.distributed and _lost_peer(e)):
                    raise
                out = cfg.resume or cfg.out
                raise PeerLostError(
                    f"rank {env.rank}: another process of this torchrun run stopped ({_first_line(e)}); "
                    f"this one stops too. The checkpoints in {out} are intact: once the cause is fixed, "
                    f"run the same command plus --resume {out}") from None
    finally:
        if owns_group:
            dist_mod.teardown()
        torch.set_num_threads(previous_threads)


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device, workers: int, stop: _StopRequest,
           progress: bool) -> dict[str, Any]:
    from .weights import save_model

    out = Path(cfg.resume if cfg.resume else cfg.out)
    main = env.is_main
    aux = resolve_aux(cfg)
    torch.manual_seed(cfg.seed)
    resumed, resumed_from = None, None
    if cfg.resume:
        resumed, resumed_from = latest_good_checkpoint(out)
        check_resume_config(resumed["config"], cfg)
    pre = preprocess_for(cfg)
    train_ds, val_ds, classes = build_datasets(cfg, pre)
    if resumed is not None and resumed["class_names"] != classes:
        raise ValueError(f"--resume {out}: the data's classes changed since the run started "
                         f"({resumed['class_names']} -> {classes})")

    sampler = dist_mod.ShardedSampler(len(train_ds), cfg.batch_size, env, seed=cfg.seed,
                                      weights=class_balanced_weights(train_ds) if cfg.balanced else None)
    steps = sampler.steps_per_epoch
    if sampler.local_batch % cfg.accum_steps:
        raise ValueError(f"each process's batch ({sampler.local_batch}) must be divisible by --accum-steps "
                         f"{cfg.accum_steps}")
    for ds in (train_ds, val_ds):   # bad files come back as BadImage (path, reason), for bad_images.txt
        inner = ds.dataset if isinstance(ds, Subset) else ds
        if isinstance(inner, data_mod.LabeledImages):
            inner.report_bad = True
    net = prepare_model(init_model(cfg, classes, aux), cfg, device)
    frozen = freeze(net, cfg.freeze_until)
    if frozen and main:
        logger.info("frozen (no gradients, batch norms in eval mode): %s ... %s", frozen[0], frozen[-1])
    cached = caches_features(cfg, aux)
    if cached:   # a linear probe: the backbone runs once per image, not once per image and epoch
        start = time.perf_counter()
        train_ds = backbone_features(net, train_ds, cfg, device, workers, env)
        val_ds = backbone_features(net, val_ds, cfg, device, workers, env)
        workers = 0   # the features are in memory
        if main:
            logger.info("linear probe: backbone features of %d + %d images computed once (%.1fs); "
                        "each epoch trains the head on them", len(train_ds), len(val_ds),
                        time.perf_counter() - start)
    train_loader = data_mod.labeled_loader(train_ds if cached else SeededSamples(train_ds, cfg.seed),
                                           sampler.local_batch // cfg.accum_steps,
                                           shuffle=False, workers=workers, sampler=sampler)
    val_loader = data_mod.labeled_loader(shard(val_ds, env), cfg.batch_size, shuffle=False, workers=workers)
    model = dist_mod.wrap(HeadOnly(net) if cached else net, env, device, cfg.sync_bn)
    if not cached:
        net = dist_mod.unwrap(model)   # SyncBatchNorm made a new module
    model = compile_model(model, cfg)
    optimizer, scheduler = build_optimizer(net, cfg, steps)
    ema = ModelEma(net, cfg.ema_decay) if cfg.ema_decay > 0 else None
    amp = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    meta = {"arch": cfg.arch, "model_config": dict(net.config), "num_classes": len(classes),
            "class_names": classes, "preprocess": pre.to_dict()}
    best_path, last_path, metrics_path = out / "best.safetensors", out / "last.pt", out / "metrics.jsonl"
    best_acc1, history, done_epochs, epoch_state = -1.0, [], 0, None
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        if ema is not None:
            ema.load_state_dict(resumed["ema"])
        if scaler is not None:
            scaler.load_state_dict(resumed["scaler"])
        best_acc1, done_epochs = resumed["best_acc1"], resumed["epoch"]
        history = list(resumed.get("history") or _read_history(metrics_path, done_epochs))
        same_world = len(resumed.get("rng") or []) == env.world_size
        if resumed.get("epoch_state") is not None:
            if not same_world:
                raise ValueError(f"--resume {out}: the checkpoint is mid-epoch from {len(resumed['rng'])} "
                                 f"processes, now {env.world_size}; resume with the same number")
            epoch_state = EpochState(**{**resumed["epoch_state"][env.rank], "stopped": False})
        if same_world:
            set_rng_state(resumed["rng"][env.rank])
        else:
            torch.manual_seed(cfg.seed + 7919 * done_epochs + env.rank)
        if main:
            logger.info("resuming %s from %s: epoch %d, step %d of %d", out, resumed_from,
                        done_epochs + 1, epoch_state.step if epoch_state else 0, steps)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        # A new run starts the metrics afresh; a resumed one keeps the epochs its checkpoint knows.
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        logger.info(
            "training %s on %s: %d train / %d held-out images, %d classes, %d px%s, %d epochs x %d steps, "
            "device %s (%s%s%s%s), %d process(es), %d threads, %d workers",
            cfg.arch, cfg.data, len(train_ds), len(val_ds), len(classes), cfg.image_size,
            " + aux head" if aux else "", cfg.epochs, steps, device,
            {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[amp],
            ", channels_last" if cfg.channels_last else "",
            ", gradient checkpointing" if cfg.grad_checkpointing else "",
            f", torch.compile {cfg.compile_backend}" if cfg.compile else "",
            env.world_size, torch.get_num_threads(), workers,
        )

    last_saved = [time.monotonic()]

    def checkpoint(epochs_done: int, st: EpochState | None) -> None:
        # Every rank takes part (its RNG state and partial sums are gathered); rank 0 writes.
        last_saved[0] = time.monotonic()
        rngs = dist_mod.gather_objects(rng_state(), env)
        states = dist_mod.gather_objects(st.to_dict(), env) if st is not None else None
        if not main:
            return
        write_checkpoint(out, {
            "format": CHECKPOINT_FORMAT, "model": _state_dict(net), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epochs_done,
            "step": st.step if st is not None else 0,
            "global_step": epochs_done * steps + (st.step if st is not None else 0),
            "epoch_state": states, "rng": rngs, "world_size": env.world_size, "best_acc1": best_acc1,
            "history": history, "config": cfg.to_dict(), "class_names": classes, "meta": meta,
        }, cfg.keep_last)

    def on_step(st: EpochState) -> None:
        due = bool(cfg.save_every and st.step % cfg.save_every == 0)
        if cfg.save_minutes:   # every rank's clock votes, so that all of them save at the same step
            late = time.monotonic() - last_saved[0] >= 60 * cfg.save_minutes
            due = due or bool(dist_mod.all_reduce([float(late)], env, device, op="max")[0])
        if st.stopped or (due and st.step < steps):
            checkpoint(st.epoch - 1, st)

    tb = open_tensorboard(out / TB_FOLDER) if main else None
    try:
        for epoch in range(done_epochs + 1, cfg.epochs + 1):
            st = epoch_state if epoch_state is not None and epoch_state.epoch == epoch else EpochState(epoch)
            epoch_state = None
            sampler.set_epoch(epoch, st.step)
            tr = train_one_epoch(model, train_loader, optimizer, scheduler, cfg, device, epoch,
                                 progress and main, state=st, env=env, should_stop=lambda: bool(stop),
                                 on_step=on_step, ema=ema, scaler=scaler)
            if tr["stopped"]:
                name = signal.Signals(stop.signum).name if stop.signum else "a stop request"
                message = (f"{name}: stopped after epoch {epoch} step {st.step} of {steps}; checkpoint "
                           f"{last_path}. Resume with the same command plus --resume {out}")
                if main:
                    logger.warning("%s", message)
                raise TrainingInterrupted(message)
            val_bad: list[list[str]] = []
            va = evaluate(ema.module if ema is not None else model, _recording_bad(val_loader, val_bad),
                          len(classes), device, cfg.amp, env)
            val_bad = [b for rank in dist_mod.gather_objects(val_bad, env) for b in rank]
            record = {
                "epoch": epoch, "train_loss": tr["loss"], "train_acc1": tr["acc1"], "lr": tr["lr"],
                "val_loss": va["loss"], "val_acc1": va["top1"], "val_acc5": va["top5"],
                "skipped": tr["skipped"] + va["skipped"], "nonfinite_steps": tr["nonfinite"],
                "seconds": tr["seconds"],
            }
            history.append(record)
            improved = va["top1"] > best_acc1
            if improved:
                best_acc1 = va["top1"]
            if main:
                _append_jsonl(metrics_path, record)
                write_bad_images(out / BAD_IMAGES_FILE, epoch, tr["bad_images"], val_bad)
                if tb is not None:
                    for key, value in record.items():
                        if key != "epoch":
                            tb.add_scalar(TB_TAGS.get(key, key), value, epoch)
                    tb.flush()
                if improved:
                    save_model(ema.module if ema is not None else net, best_path, class_names=classes,
                               preprocess=pre, extra={"epoch": epoch, "acc1": va["top1"], "acc5": va["top5"]})
                    write_text_atomic(out / CONFUSION_FILE, json.dumps(
                        {"epoch": epoch, "class_names": classes, "top1": va["top1"],
                         "matrix": va["confusion"]}) + "\n")
            checkpoint(epoch, None)
            if main:
                logger.info(
                    "epoch %d/%d  loss %.4f  train top-1 %.2f%%  held-out top-1 %.2f%% top-5 %.2f%%  lr %.2e  "
                    "%.1fs%s%s%s",
                    epoch, cfg.epochs, tr["loss"], tr["acc1"], va["top1"], va["top5"], tr["lr"], tr["seconds"],
                    f"  skipped {record['skipped']} bad images ({BAD_IMAGES_FILE})" if record["skipped"] else "",
                    f"  skipped {tr['nonfinite']} non-finite steps" if tr["nonfinite"] else "",
                    "  (best)" if improved else "",
                )
    finally:
        if tb is not None:
            tb.close()
    dist_mod.barrier(env)
    return {"best_acc1": best_acc1, "history": history, "best_path": str(best_path),
            "last_path": str(last_path), "config": cfg.to_dict()}
