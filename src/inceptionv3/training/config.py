"""`TrainConfig`, the single source of `inceptionv3 train`'s flags (one field per flag, saved as
config.json), and the named recipes that fill the flags left at their defaults.

The default recipe works from scratch on a few thousand images (e.g. the embedded digits): AdamW
without weight decay on BN and bias parameters, a one-cycle LR schedule stepped per optimizer step,
label smoothing 0.1, gradient clipping at 2.0, the aux loss weighted 0.4 when the aux head is on (only
possible at >= 299 px), bf16 autocast where the hardware computes it natively (`--amp auto`), NHWC.

No torch here: the CLI builds `train`'s parser from this module, and `--help` must stay fast.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FOLDER_CROP_FRACTION = 0.875  # folders: resize to size / 0.875, center-crop size (the Inception eval crop)
DEFAULT_IMAGE_SIZE = 75       # without --weights: the smallest input the network takes, fast on CPUs


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
    image_size: int | None = field(default=None, metadata={
        "help": f"input side in pixels (>= 75; the aux head needs >= 299; default: the --weights' input "
                f"size, else {DEFAULT_IMAGE_SIZE})"})
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
        "help": "continue the run in this folder from its latest good checkpoint, with its saved settings "
                "(--epochs may grow; where and how it runs may change)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh in an --out folder that holds a run, removing that run's files (only those)"})
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
                "AVX512-BF16, CUDA GPUs with bf16; fp32 elsewhere; on a multi-threaded CPU the first 8 "
                "steps alternate bf16 and fp32 and the rest of the run takes the faster), bf16 autocast, "
                "fp16 autocast with a gradient scaler (for GPUs), or off; weights and optimizer stay fp32",
        "choices": ("auto", "off", "bf16", "fp16")})
    accum_steps: int = field(default=1, metadata={
        "help": "split each step's batch into this many micro-batches, accumulating gradients (less memory, "
                "same step; batch-norm statistics are then per micro-batch)"})
    channels_last: bool = field(default=True, metadata={
        "help": "NHWC memory layout (faster convolutions on recent CPUs and GPUs)"})
    grad_checkpointing: bool = field(default=False, metadata={
        "help": "recompute the Mixed blocks' activations in the backward pass instead of keeping them "
                "(less memory, so larger batches fit; each step takes longer: see benchmarks/bench_train.py)"})
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
        problems = [p for p in (self._check_sizes() + self._check_rates()) if p]
        if self.recipe == "finetune" and self.weights is None:
            problems.append("--recipe finetune needs --weights (a registry name such as imagenet, or a "
                            "file) to fine-tune; to train from scratch leave --recipe unset")
        if self.resume and self.overwrite:
            problems.append("--overwrite and --resume exclude each other: continue the run, or replace it")
        if not problems and self.compile_backend != "inductor":
            problems.append(_check_compile_backend(self.compile_backend))
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("; ".join(problems))

    def _check_sizes(self) -> list[str | None]:
        """Counts and sizes: each problem as 'flag value: what it must be'."""
        def at_least(name: str, low: int, optional: bool = False, why: str = "") -> str | None:
            value = getattr(self, name)
            if optional and value is None:
                return None
            if isinstance(value, int) and not isinstance(value, bool) and value >= low:
                return None
            return f"{_flag(name)} {value!r}: must be an integer >= {low}{why}"
        return [at_least("epochs", 1), at_least("batch_size", 1), at_least("accum_steps", 1),
                at_least("image_size", 1, optional=True), at_least("limit", 1, optional=True),
                at_least("workers", 0, optional=True),
                at_least("threads", 1, optional=True, why=" (leave it unset for the cores left free)"),
                at_least("save_every", 0, why=" (0: at epoch ends only)"),
                at_least("keep_last", 0, why=" (0: no step snapshots)")]

    def _check_rates(self) -> list[str | None]:
        """Rates, fractions and weights: finite and in range."""
        def in_range(name: str, low: float, high: float = math.inf, low_open: bool = False,
                     high_open: bool = False, optional: bool = False, why: str = "") -> str | None:
            value = getattr(self, name)
            if optional and value is None:
                return None
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (number and math.isfinite(value) and (value > low if low_open else value >= low)
                    and (value < high if high_open else value <= high)):
                return None
            lo = f"> {low:g}" if low_open else f">= {low:g}"
            hi = "" if high == math.inf else (f" and < {high:g}" if high_open else f" and <= {high:g}")
            return f"{_flag(name)} {value!r}: must be {lo}{hi}{why}"
        return [in_range("lr", 0.0, low_open=True),
                in_range("weight_decay", 0.0), in_range("label_smoothing", 0.0, 1.0, high_open=True),
                in_range("clip_grad", 0.0, why=" (0: off)"), in_range("aux_weight", 0.0),
                in_range("val_fraction", 0.0, 1.0, high_open=True),
                in_range("save_minutes", 0.0, why=" (0: off)"),
                in_range("dropout", 0.0, 1.0, high_open=True, optional=True),
                in_range("ema_decay", 0.0, 1.0, high_open=True, why=" (0: off)"),
                in_range("warmup_epochs", 0.0), in_range("backbone_lr_scale", 0.0),
                in_range("crop_scale", 0.0, 1.0, low_open=True, optional=True)]

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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_compile_backend(name: str) -> str | None:
    """A --compile-backend torch.compile does not know, as a problem naming the ones it knows."""
    from torch._dynamo import list_backends  # only for a backend given by name: the import is slow

    if name in list_backends(exclude_tags=()):
        return None
    known = ", ".join(list_backends())
    return f"--compile-backend {name!r}: torch.compile has no such backend; one of {known}"


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
