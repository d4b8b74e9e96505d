"""Convert InceptionV3 weights from other frameworks into our self-describing .safetensors files.

Every converter ends the same way: the tensors go through the strict loader (a shape check on every
tensor; one error listing missing, unexpected and mis-shaped keys), then ``save_model`` writes the file
with arch, model config, class names and preprocessing as metadata.

Key maps:

- torchvision / timm / pytorch-fid: the keys are already ours (torchvision's); the file is validated and
  rewritten. pytorch-fid's file is the FID graph: 1008 classes, TF-style pooling, a max-pool in Mixed_7c.
- Keras HDF5 (Keras 2 ``.h5`` from ``save_weights`` / ``save``, Keras 3 ``.weights.h5``):
  ``conv2d[_k]`` -> the k-th ``*.conv.weight`` of ``CONV_ORDER`` (kernel HWIO -> OIHW, transposed);
  ``batch_normalization[_k]`` -> the k-th ``*.bn``: beta -> bias, moving_mean -> running_mean,
  moving_variance -> running_var, gamma -> weight (Keras' InceptionV3 has ``scale=False``: weight = 1);
  ``predictions`` kernel (in, out) -> ``fc.weight`` (out, in, transposed), bias -> ``fc.bias``.
  Layers are matched by creation order, i.e. the numeric suffix of their auto-generated names, never by
  the order they are stored in the file (alphabetical: conv2d_10 before conv2d_2). Keras pools with
  padding excluded, so the model is built with ``count_include_pad=False``; Keras has no aux head.
- TF-slim checkpoints (``inception_v3.ckpt`` of ``inception_v3_2016_08_28.tar.gz``, a single-file V1
  checkpoint; V2 ``PREFIX.index`` + ``PREFIX.data-*`` too), read by ``tf_bundle`` without TensorFlow:
  ``InceptionV3/<scope>/weights`` -> ``<block>.conv.weight`` (HWIO -> OIHW, transposed), with scopes from
  ``SLIM_CONV_SCOPES``; ``<scope>/BatchNorm/{beta,moving_mean,moving_variance}`` -> ``bn.{bias,running_mean,
  running_var}``; slim's BN has ``scale=False``, so ``bn.weight`` = 1 (a ``BatchNorm/gamma`` is used if
  present). ``Logits/Conv2d_1c_1x1`` and ``AuxLogits/Conv2d_2b_1x1`` are 1x1 convs with biases: weights
  (1, 1, in, out) -> ``fc.weight`` / ``AuxLogits.fc.weight`` (out, in). 1001 classes, index 0 = background:
  row 0 is dropped unless ``keep_background``. Slim pools with TF's SAME padding (padding excluded):
  ``count_include_pad=False``. ``global_step`` and other tensors outside the ``InceptionV3/`` scope,
  optimizer slots and ``ExponentialMovingAverage`` copies are skipped; ``ema=True`` takes a weight's
  ``.../ExponentialMovingAverage`` copy instead of the weight where the file has one.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional, Union

import torch

from .transforms import Preprocess
from .weights import (
    REGISTRY, WeightsError, _apply_state_dict, _entry_for_sha, _infer_config, read_state_dict, save_model,
    sha256_file,
)

__all__ = ["SOURCES", "convert", "keras_state_dict", "conv_order", "slim_state_dict", "SLIM_CONV_SCOPES"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

SOURCES = ("keras", "tf-slim", "torchvision", "timm", "fid")

# What each source's weights expect of their inputs when nothing better is known (a registry entry
# matched by hash wins). TF (Keras' preprocess_input, slim's inception_preprocessing) scales to [-1, 1]
# and evaluates a 0.875 central crop resized bilinearly to 299; timm: 299/0.875 -> floor 341, bicubic.
_TF_PREPROCESS = Preprocess(input_size=299, resize_size=342, interpolation="bilinear",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_TIMM_PREPROCESS = Preprocess(input_size=299, resize_size=341, interpolation="bicubic",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_KERAS_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}


def conv_order() -> list[str]:
    """Our conv blocks (``Conv2d_1a_3x3``, ``Mixed_5b.branch1x1`` ...) in the order Keras creates them.

    That order is our constructor's, minus the aux head (Keras has none): both follow the same graph code
    branch by branch.
    """
    from .model import BasicConv2d, inception_v3

    with torch.device("meta"):
        model = inception_v3(num_classes=1, aux_logits=False, init_weights=False)
    return [name for name, m in model.named_modules() if isinstance(m, BasicConv2d)]


# ---------------------------------------------------------------------------------------------- Keras


# Keras 3 .weights.h5 files name layers by class and position in ``model.layers`` (the Functional graph's
# topological order: conv2d, conv2d_1, ...), not by layer name. Entry k is the creation index of the
# k-th Conv2D (and BatchNormalization) in that order for keras.applications.InceptionV3, measured with
# Keras 3.15; the Keras-3 parity test in tests/test_convert.py checks it.
KERAS3_CREATION_INDEX = (
    0, 1, 2, 3, 4, 8, 6, 9, 5, 7, 10, 11, 15, 13, 16, 12, 14, 17, 18, 22, 20, 23, 19, 21, 24, 25, 27, 28,
    26, 29, 34, 35, 31, 36, 32, 37, 30, 33, 38, 39, 44, 45, 41, 46, 42, 47, 40, 43, 48, 49, 54, 55, 51, 56,
    52, 57, 50, 53, 58, 59, 64, 65, 61, 66, 62, 67, 60, 63, 68, 69, 72, 73, 70, 74, 71, 75, 80, 77, 81, 78,
    79, 82, 83, 76, 84, 89, 86, 90, 87, 88, 91, 92, 85, 93,
)


def _suffix(name: str) -> int:
    # Keras names layers conv2d, conv2d_1, conv2d_2 ...: the suffix is the creation index (none = 0).
    found = re.search(r"_(\d+)$", name)
    return int(found.group(1)) if found else 0


def _read_keras_layers(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], bool]:
    """({layer name: {weight name: tensor}}, is a Keras 3 file) from a Keras 2 or Keras 3 HDF5 file."""
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras .h5 files needs h5py: pip install h5py") from None
    import numpy as np

    layers: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with h5py.File(path, "r") as f:
            keras3 = "layers" in f and "layer_names" not in f.attrs
            if keras3:
                # Keras 3 .weights.h5: layers/<name>/vars/<i>, variables in creation order.
                for name, group in f["layers"].items():
                    if "vars" in group and len(group["vars"]):
                        values = [group["vars"][str(i)] for i in range(len(group["vars"]))]
                        layers[name] = _name_keras3_vars(name, [np.asarray(v) for v in values])
            else:
                # Keras 2 save_weights / save: (model_weights/)<name>/ with a weight_names attribute.
                root = f["model_weights"] if "model_weights" in f else f
                if "layer_names" not in root.attrs:
                    raise WeightsError(f"{path}: an HDF5 file, but not Keras weights (no 'layer_names' "
                                       f"attribute and no 'layers' group)")
                for raw in root.attrs["layer_names"]:
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    if name not in root:
                        raise WeightsError(f"{path}: lists layer {name!r} but holds no weights for it; "
                                           f"the file is damaged")
                    group = root[name]
                    weights = {}
                    for w in group.attrs.get("weight_names", []):
                        w = w.decode() if isinstance(w, bytes) else str(w)
                        # "conv2d_5/kernel:0" (Keras 2) or "conv2d_5/kernel" (Keras 3's legacy writer)
                        weights[w.split("/")[-1].split(":")[0]] = torch.from_numpy(np.asarray(group[w]))
                    if weights:
                        layers[name] = weights
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e}); it may be truncated") from None
    return layers, keras3


def _name_keras3_vars(layer: str, values: list) -> dict[str, torch.Tensor]:
    t = [torch.from_numpy(v.copy()) for v in values]
    if layer.startswith("batch_normalization"):
        names = ["gamma", "beta", "moving_mean", "moving_variance"][-len(t):]   # gamma only if scale=True
    elif layer.startswith("conv2d"):
        names = ["kernel", "bias"][:len(t)]
    else:
        names = ["kernel", "bias"][:len(t)]
    return dict(zip(names, t))


def keras_state_dict(path: PathLike, num_classes: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Our state dict (no aux head) from a Keras InceptionV3 HDF5 weights file.

    A no-top file (``include_top=False``: no 'predictions' layer) cannot classify; it is refused unless
    ``num_classes`` is given, which adds a fresh zero classifier for fine-tuning or feature extraction.
    """
    path = Path(path)
    layers, keras3 = _read_keras_layers(path)
    convs = sorted((n for n in layers if re.fullmatch(r"conv2d(_\d+)?", n)), key=_suffix)
    bns = sorted((n for n in layers if re.fullmatch(r"batch_normalization(_\d+)?", n)), key=_suffix)
    order = conv_order()
    if len(convs) != len(order) or len(bns) != len(order):
        raise WeightsError(f"{path}: {len(convs)} conv and {len(bns)} batch-norm layers with weights; "
                           f"Keras' InceptionV3 has {len(order)} of each. Is this an InceptionV3 file?")
    if keras3:   # file position -> creation order
        convs = [convs[i] for i in sorted(range(len(convs)), key=KERAS3_CREATION_INDEX.__getitem__)]
        bns = [bns[i] for i in sorted(range(len(bns)), key=KERAS3_CREATION_INDEX.__getitem__)]
    sd: dict[str, torch.Tensor] = {}
    for block, conv, bn in zip(order, convs, bns):
        kernel = layers[conv]["kernel"]
        if kernel.ndim != 4:
            raise WeightsError(f"{path}: layer {conv} kernel has shape {tuple(kernel.shape)}, "
                               f"expected 4-D HWIO")
        sd[f"{block}.conv.weight"] = kernel.permute(3, 2, 0, 1).contiguous()   # HWIO -> OIHW
        weights = layers[bn]
        channels = weights["moving_mean"].shape[0]
        sd[f"{block}.bn.weight"] = weights.get("gamma", torch.ones(channels))  # scale=False: gamma is 1
        for k, ours in _KERAS_BN.items():
            if k != "gamma":
                sd[f"{block}.bn.{ours}"] = weights[k]
        sd[f"{block}.bn.num_batches_tracked"] = torch.tensor(0)
    # Keras 2 files name the classifier by its layer name ("predictions"); Keras 3 .weights.h5 files by
    # its class ("dense").
    heads = [n for n in layers if n == "predictions" or re.fullmatch(r"dense(_\d+)?", n)]
    if len(heads) > 1:
        raise WeightsError(f"{path}: several dense layers ({heads}); Keras' InceptionV3 has one classifier")
    if heads:
        sd["fc.weight"] = layers[heads[0]]["kernel"].t().contiguous()    # (in, out) -> (out, in)
        sd["fc.bias"] = layers[heads[0]]["bias"]
    elif num_classes is None:
        raise WeightsError(
            f"{path}: a Keras no-top file (include_top=False): it has no classifier ('predictions' layer), "
            f"so it cannot classify. Use the full file (inception_v3_weights_tf_dim_ordering_tf_kernels.h5), "
            f"or pass num_classes (--num-classes N) for a fresh classifier to fine-tune or to extract "
            f"features.")
    else:
        sd["fc.weight"] = torch.zeros(num_classes, 2048)
        sd["fc.bias"] = torch.zeros(num_classes)
        log.info("%s has no top; added a zero %d-class classifier", path, num_classes)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf, first: {bad[:5]}")
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------- TF-slim


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


def slim_state_dict(path: PathLike, keep_background: bool = False, ema: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """(our state dict, model config) from a TF-slim InceptionV3 checkpoint, every tensor shape-checked.

    A 1001-class file loses its background row (index 0) unless ``keep_background``; other class counts
    (slim fine-tunes) are kept as they are. Missing, unexpected and mis-shaped tensors are reported in one
    WeightsError naming the file.
    """
    from .model import inception_v3
    from .tf_bundle import open_checkpoint
    from .weights import _check_finite, _first

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

    def take(name: str, shape: tuple[int, ...], optional: bool = False) -> Optional[torch.Tensor]:
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
        lines = [f"{label}: not the TF-slim InceptionV3 this converter maps (nets/inception_v3.py)"]
        if missing:
            lines.append(f"  missing from the file ({len(missing)}): {_first(missing)}")
        if unexpected:
            lines.append(f"  not in the key map ({len(unexpected)}): {_first(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped ({len(misshaped)}): {_first(misshaped)}")
        lines.append("  hint: --from tf-slim expects slim's InceptionV3 with its default depth; a checkpoint "
                     "of another slim network needs that network")
        raise WeightsError("\n".join(lines))
    if skipped:
        log.info("%s: skipped %d tensor(s) that are not model weights: %s", label, len(skipped),
                 _first(skipped))
    _check_finite(sd, Path(label))

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


# ---------------------------------------------------------------------------------------------- convert


def _torch_config(sd: dict[str, torch.Tensor], source: str, label: str) -> tuple[str, dict]:
    arch, config = _infer_config(sd, label)
    if arch != "inception_v3":
        raise WeightsError(f"{label}: an {arch} state dict, not InceptionV3; --from {source} expects "
                           f"InceptionV3 weights")
    if source == "fid":
        if config["num_classes"] != 1008 or config["aux_logits"]:
            raise WeightsError(f"{label}: pytorch-fid's FID network has 1008 classes and no aux head; this "
                               f"file has {config['num_classes']} classes"
                               f"{' and an aux head' if config['aux_logits'] else ''}. "
                               f"Use --from torchvision")
        config.update(count_include_pad=False, last_pool="max")   # the TF 2015 graph pytorch-fid ports
    return arch, config


def convert(src: PathLike, source: str, out: PathLike, num_classes: Optional[int] = None,
            keep_background: bool = False, ema: bool = False) -> dict:
    """Convert ``src`` (weights from ``source``, one of SOURCES) into our .safetensors file ``out``.

    ``num_classes``: a fresh classifier for a Keras no-top file. TF-slim: ``keep_background`` keeps the
    1001st (background, index 0) class, ``ema`` takes the ExponentialMovingAverage copies of the weights.
    ``src`` for TF-slim is a V1 ``.ckpt`` file, or a V2 checkpoint's prefix or ``.index`` file.
    Returns {"path", "tensors", "model_config", "sha256"}. Raises WeightsError naming the file and the fix.
    """
    from .model import build_model
    from .weights import _guess_preprocess

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    src = Path(src)
    names: Optional[list[str]] = None
    arch = "inception_v3"
    if source == "tf-slim":
        sd, found = slim_state_dict(src, keep_background=keep_background, ema=ema)
        config = found["config"]
        main_file = found["files"][0]   # the V1 file or the V2 index (it holds every data file's crc)
        digest = sha256_file(main_file)
        preprocess = _TF_PREPROCESS
        imagenet = REGISTRY["imagenet"].categories()
        if config["num_classes"] == len(imagenet):
            names = imagenet
        elif config["num_classes"] == SLIM_BACKGROUND_CLASSES:
            names = ["background", *imagenet]
        src = main_file
    else:
        if not src.is_file():
            raise WeightsError(f"{src}: no such weights file")
        digest = sha256_file(src)
        entry = _entry_for_sha(digest)
        if source == "keras":
            sd = keras_state_dict(src, num_classes=num_classes)
            config = {"num_classes": int(sd["fc.weight"].shape[0]), "aux_logits": False,
                      "count_include_pad": False}   # Keras' AveragePooling2D(padding="same") excludes the pad
            preprocess = _TF_PREPROCESS
        else:
            sd, _ = read_state_dict(src)   # refuses pickled code, NaN/Inf, truncated files
            arch, config = _torch_config(sd, source, str(src))
            if entry is not None:
                preprocess = entry.preprocess
            elif source == "timm":
                preprocess = _TIMM_PREPROCESS
            elif source == "fid":
                preprocess = REGISTRY["fid"].preprocess
            else:
                preprocess = _guess_preprocess(str(src))
        if entry is not None and entry.num_classes == config["num_classes"]:
            names = entry.categories()
    model = build_model(arch, **config, init_weights=False)
    _apply_state_dict(model, sd, str(src), strict=True)   # every key and shape checked
    path = save_model(model, out, class_names=names, preprocess=preprocess,
                      extra={"converted_from": source, "source_file": src.name, "source_sha256": digest})
    log.info("converted %s (%s, %d tensors) to %s", src, source, len(sd), path)
    return {"path": path, "tensors": len(sd), "model_config": dict(model.config), "sha256": digest}
