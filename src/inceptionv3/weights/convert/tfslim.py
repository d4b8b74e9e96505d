"""TF-slim InceptionV3 checkpoints (``inception_v3.ckpt`` of ``inception_v3_2016_08_28.tar.gz``, a
single-file V1 checkpoint; V2 ``PREFIX.index`` + ``PREFIX.data-*`` too), read by ``tf_bundle``.

The key map: ``InceptionV3/<scope>/weights`` -> ``<block>.conv.weight`` (HWIO -> OIHW, transposed), with
scopes from ``SLIM_CONV_SCOPES``; ``<scope>/BatchNorm/{beta,moving_mean,moving_variance}`` ->
``bn.{bias,running_mean,running_var}``; slim's BN has ``scale=False``, so ``bn.weight`` = 1 (a
``BatchNorm/gamma`` is used if present). ``Logits/Conv2d_1c_1x1`` and ``AuxLogits/Conv2d_2b_1x1`` are 1x1
convs with biases: weights (1, 1, in, out) -> ``fc.weight`` / ``AuxLogits.fc.weight`` (out, in). 1001
classes, index 0 = background: row 0 is dropped unless ``keep_background``. Slim pools with TF's SAME
padding (padding excluded): ``count_include_pad=False``. ``global_step`` and other tensors outside the
``InceptionV3/`` scope, optimizer slots and ``ExponentialMovingAverage`` copies are skipped; ``ema=True``
takes a weight's ``.../ExponentialMovingAverage`` copy instead of the weight where the file has one.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ...models.inception import inception_v3
from ..errors import WeightsError
from ..io import check_finite
from ..load import first_keys, key_report
from ..registry import REGISTRY
from .tf_bundle import open_checkpoint

log = logging.getLogger(__name__)

# Our conv block -> its TF-slim scope under "InceptionV3/", per block type (slim's nets/inception_v3.py).
_SLIM_BRANCHES = {
    "A": (("branch1x1", "Branch_0/Conv2d_0a_1x1"), ("branch5x5_1", "Branch_1/Conv2d_0a_1x1"),
          ("branch5x5_2", "Branch_1/Conv2d_0b_5x5"), ("branch3x3dbl_1", "Branch_2/Conv2d_0a_1x1"),
          ("branch3x3dbl_2", "Branch_2/Conv2d_0b_3x3"), ("branch3x3dbl_3", "Branch_2/Conv2d_0c_3x3"),
          ("branch_pool", "Branch_3/Conv2d_0b_1x1")),
    # slim calls Mixed_6a's two stride-2 3x3 convs "Conv2d_1a_1x1"; they are 3x3 all the same.
    "B": (("branch3x3", "Branch_0/Conv2d_1a_1x1"), ("branch3x3dbl_1", "Branch_1/Conv2d_0a_1x1"),
          ("branch3x3dbl_2", "Branch_1/Conv2d_0b_3x3"), ("branch3x3dbl_3", "Branch_1/Conv2d_1a_1x1")),
    "C": (("branch1x1", "Branch_0/Conv2d_0a_1x1"), ("branch7x7_1", "Branch_1/Conv2d_0a_1x1"),
          ("branch7x7_2", "Branch_1/Conv2d_0b_1x7"), ("branch7x7_3", "Branch_1/Conv2d_0c_7x1"),
          ("branch7x7dbl_1", "Branch_2/Conv2d_0a_1x1"), ("branch7x7dbl_2", "Branch_2/Conv2d_0b_7x1"),
          ("branch7x7dbl_3", "Branch_2/Conv2d_0c_1x7"), ("branch7x7dbl_4", "Branch_2/Conv2d_0d_7x1"),
          ("branch7x7dbl_5", "Branch_2/Conv2d_0e_1x7"), ("branch_pool", "Branch_3/Conv2d_0b_1x1")),
    "D": (("branch3x3_1", "Branch_0/Conv2d_0a_1x1"), ("branch3x3_2", "Branch_0/Conv2d_1a_3x3"),
          ("branch7x7x3_1", "Branch_1/Conv2d_0a_1x1"), ("branch7x7x3_2", "Branch_1/Conv2d_0b_1x7"),
          ("branch7x7x3_3", "Branch_1/Conv2d_0c_7x1"), ("branch7x7x3_4", "Branch_1/Conv2d_1a_3x3")),
    "E": (("branch1x1", "Branch_0/Conv2d_0a_1x1"), ("branch3x3_1", "Branch_1/Conv2d_0a_1x1"),
          ("branch3x3_2a", "Branch_1/Conv2d_0b_1x3"), ("branch3x3_2b", "Branch_1/Conv2d_0b_3x1"),
          ("branch3x3dbl_1", "Branch_2/Conv2d_0a_1x1"), ("branch3x3dbl_2", "Branch_2/Conv2d_0b_3x3"),
          ("branch3x3dbl_3a", "Branch_2/Conv2d_0c_1x3"), ("branch3x3dbl_3b", "Branch_2/Conv2d_0d_3x1"),
          ("branch_pool", "Branch_3/Conv2d_0b_1x1")),
}

_SLIM_BLOCKS = {"Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B", "Mixed_6b": "C",
                "Mixed_6c": "C", "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E",
                "Mixed_7c": "E"}

# Where the released graph's scope names break its own pattern.
_SLIM_IRREGULAR = {
    "Mixed_5c.branch5x5_1": "Mixed_5c/Branch_1/Conv2d_0b_1x1",
    "Mixed_5c.branch5x5_2": "Mixed_5c/Branch_1/Conv_1_0c_5x5",
    "Mixed_7c.branch3x3_2b": "Mixed_7c/Branch_1/Conv2d_0c_3x1",
}

_SLIM_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")

_SLIM_AUX = {"AuxLogits.conv0": "AuxLogits/Conv2d_1b_1x1", "AuxLogits.conv1": "AuxLogits/Conv2d_2a_5x5"}

# Our conv block (BasicConv2d: conv without bias + BN) -> TF-slim scope: the written key map.
SLIM_CONV_SCOPES: dict[str, str] = {
    **{name: name for name in _SLIM_STEM},
    **{f"{block}.{ours}": _SLIM_IRREGULAR.get(f"{block}.{ours}", f"{block}/{theirs}")
       for block, kind in _SLIM_BLOCKS.items() for ours, theirs in _SLIM_BRANCHES[kind]},
    **_SLIM_AUX,
}

# Classifiers: slim's 1x1 convs with biases -> our Linear layers.
SLIM_HEADS = {"fc": "Logits/Conv2d_1c_1x1", "AuxLogits.fc": "AuxLogits/Conv2d_2b_1x1"}

_SLIM_BN = {"beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_SLIM_SCOPE = "InceptionV3/"
_EMA_SUFFIX = "/ExponentialMovingAverage"

# Optimizer slot variables saved next to each weight during training (RMSProp is slim's default).
_SLOT = re.compile(r"/(RMSProp(_1)?|Momentum|Adam(_1)?|Adagrad|Adadelta(_1)?|Ftrl(_1)?"
                   r"|ExponentialMovingAverage)$")

SLIM_BACKGROUND_CLASSES = 1001   # ImageNet's 1000 classes after a background class at index 0


def _slim_hwio(shape: torch.Size) -> tuple[int, ...]:
    # Our OIHW conv shape as slim stores it (HWIO).
    return (shape[2], shape[3], shape[1], shape[0])


def slim_state_dict(path: str | os.PathLike, keep_background: bool = False, ema: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """(our state dict, model config) from a TF-slim InceptionV3 checkpoint, every tensor shape-checked.

    A 1001-class file loses its background row (index 0) unless ``keep_background``; other class counts
    (slim fine-tunes) are kept as they are. Missing, unexpected and mis-shaped tensors are reported in one
    WeightsError naming the file.
    """
    ckpt = open_checkpoint(path)
    label = ckpt.label
    names = set(ckpt.tensors)
    head = f"{_SLIM_SCOPE}{SLIM_HEADS['fc']}/biases"
    if head not in names:
        scopes = sorted({n.split("/")[0] for n in names if "/" in n})
        raise WeightsError(f"{label}: not a TF-slim InceptionV3 classifier checkpoint: no {head!r} "
                           f"(top-level scopes: {scopes[:6]}). --from tf-slim reads nets/inception_v3.py "
                           f"checkpoints such as inception_v3_2016_08_28's inception_v3.ckpt")
    file_classes = int(ckpt.tensors[head].shape[0]) if ckpt.tensors[head].shape else 0
    aux = any(n.startswith(f"{_SLIM_SCOPE}AuxLogits/") for n in names)
    with torch.device("meta"):   # shapes only
        expected = inception_v3(num_classes=max(file_classes, 1), aux_logits=aux, init_weights=False
                                ).state_dict()
    has_ema = any(n.endswith(_EMA_SUFFIX) for n in names)
    if ema and not has_ema:
        raise WeightsError(f"{label}: holds no ExponentialMovingAverage copies; convert without --ema")
    if has_ema and not ema:
        log.info("%s also holds ExponentialMovingAverage copies of its weights; --ema (ema=True) uses them",
                 label)

    used: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []

    def take(name: str, shape: tuple[int, ...], optional: bool = False) -> torch.Tensor | None:
        key = _SLIM_SCOPE + name
        source = key + _EMA_SUFFIX if ema and key + _EMA_SUFFIX in names else key
        if source not in names:
            if not optional:
                missing.append(key)
            return None
        used.update((key, source))
        info = ckpt.tensors[source]
        if info.shape != tuple(shape):
            misshaped.append(f"{source}: file {info.shape} vs expected {tuple(shape)}")
            return None
        return ckpt.read(source).float()

    sd: dict[str, torch.Tensor] = {}
    convs = [k[: -len(".conv.weight")] for k in expected if k.endswith(".conv.weight")]
    for block in convs:
        scope = SLIM_CONV_SCOPES[block]
        kernel = take(f"{scope}/weights", _slim_hwio(expected[f"{block}.conv.weight"].shape))
        if kernel is not None:
            sd[f"{block}.conv.weight"] = kernel.permute(3, 2, 0, 1).contiguous()   # HWIO -> OIHW
        channels = expected[f"{block}.bn.bias"].shape
        for theirs, ours in _SLIM_BN.items():
            value = take(f"{scope}/BatchNorm/{theirs}", channels)
            if value is not None:
                sd[f"{block}.bn.{ours}"] = value
        gamma = take(f"{scope}/BatchNorm/gamma", channels, optional=True)   # slim's scale=False: none
        sd[f"{block}.bn.weight"] = gamma if gamma is not None else torch.ones(channels)
        sd[f"{block}.bn.num_batches_tracked"] = torch.tensor(0)
    for ours, scope in SLIM_HEADS.items():
        if ours == "AuxLogits.fc" and not aux:
            continue
        out_features, in_features = expected[f"{ours}.weight"].shape
        kernel = take(f"{scope}/weights", (1, 1, in_features, out_features))
        bias = take(f"{scope}/biases", (out_features,))
        if kernel is not None:
            sd[f"{ours}.weight"] = kernel.reshape(in_features, out_features).t().contiguous()
        if bias is not None:
            sd[f"{ours}.bias"] = bias

    inside = {n for n in names if n.startswith(_SLIM_SCOPE)}
    unexpected = sorted(n for n in inside - used if not _SLOT.search(n))
    skipped = sorted((inside - used - set(unexpected)) | (names - inside))
    if missing or unexpected or misshaped:
        lines = key_report(f"{label}: not the TF-slim InceptionV3 this converter maps (nets/inception_v3.py)",
                           missing, unexpected, misshaped, unexpected_where="the key map")
        lines.append("  hint: --from tf-slim expects slim's InceptionV3 with its default depth; a checkpoint "
                     "of another slim network needs that network")
        raise WeightsError("\n".join(lines))
    if skipped:
        log.info("%s: skipped %d tensor(s) that are not model weights: %s", label, len(skipped),
                 first_keys(skipped))
    check_finite(sd, Path(label))

    num_classes = file_classes
    if file_classes == SLIM_BACKGROUND_CLASSES and not keep_background:
        num_classes -= 1
        for ours in SLIM_HEADS:
            if f"{ours}.weight" in sd:   # drop the background class, row 0
                sd[f"{ours}.weight"] = sd[f"{ours}.weight"][1:].contiguous()
                sd[f"{ours}.bias"] = sd[f"{ours}.bias"][1:].contiguous()
    config = {"num_classes": num_classes, "aux_logits": aux,
              "count_include_pad": False}   # TF's SAME average pooling excludes the padding
    return sd, {"config": config, "file_classes": file_classes, "files": ckpt.files,
                "skipped": skipped}


def slim_class_names(num_classes: int) -> list[str] | None:
    """ImageNet's class names for a slim classifier of 1000 classes, or of 1001 with the background first."""
    imagenet = REGISTRY["imagenet"].categories()
    if num_classes == len(imagenet):
        return imagenet
    if num_classes == SLIM_BACKGROUND_CLASSES:
        return ["background", *imagenet]
    return None
