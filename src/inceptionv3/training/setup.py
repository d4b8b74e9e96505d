"""Setting a run up: the input size and the aux-head decision, preprocessing and augmentation, the data
sets, the network (fresh or from --weights), freezing, device placement and layout, torch.compile.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..data.datasets import load_labeled
from ..data.transforms import eval_transform, train_transform
from ..models.base import AUX_MIN_INPUT_SIZE
from ..models.builder import build_model
from ..runtime import distributed as dist_mod
from ..weights.load import first_keys, load_model
from ..weights.preprocess import Preprocess
from .config import DEFAULT_IMAGE_SIZE, FOLDER_CROP_FRACTION, TrainConfig

logger = logging.getLogger(__name__)


def resolve_image_size(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its input size: --image-size when given, else the input size the --weights were made
    for (fine-tuning at another size loses accuracy), else DEFAULT_IMAGE_SIZE."""
    if cfg.image_size is not None:
        return cfg
    if cfg.weights is None:
        return dataclasses.replace(cfg, image_size=DEFAULT_IMAGE_SIZE)
    size = int(load_model(cfg.weights, arch=cfg.arch).meta.preprocess.input_size)
    logger.info("input size %d px, the one --weights %s expects (--image-size chooses another)", size,
                cfg.weights)
    return dataclasses.replace(cfg, image_size=size)


def resolve_aux(cfg: TrainConfig) -> bool:
    """Whether the aux head is trained: auto = inception_v3 at >= 299 px; an impossible request errors."""
    cfg = resolve_image_size(cfg)
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
    cfg = resolve_image_size(cfg)
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
    train_ds = load_labeled(cfg.data, "train", augmentation_for(cfg, pre), **kw)
    val_ds = load_labeled(cfg.data, "val", eval_transform(pre), **kw)
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
                      else f"{len(file_names)} classes [{first_keys(list(file_names))}]")
            raise ValueError(f"--weights {cfg.weights}: its classifier does not fit the data (the file has "
                             f"{theirs}; the data has {len(classes)} classes [{first_keys(classes)}]). Drop "
                             "--strict to start a fresh classifier, or train on data with the file's classes")
        model.reset_classifier(len(classes))
        logger.info("started from %s: backbone loaded; classifier reset for %d classes (%s)%s",
                    cfg.weights, len(classes), why, "" if aux else "; aux head not used")
    return model


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
    net = unwrap_compiled(model)
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


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The network inside the compile and DDP wrappers."""
    return dist_mod.unwrap(getattr(model, "_orig_mod", model))
