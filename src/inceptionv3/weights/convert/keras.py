"""Keras InceptionV3 weights (Keras 2 ``.h5`` from ``save_weights`` / ``save``, Keras 3 ``.weights.h5``,
and Keras 3 ``.keras`` archives, a zip holding ``model.weights.h5``).

The key map: ``conv2d[_k]`` -> the k-th ``*.conv.weight`` of ``conv_order()`` (kernel HWIO -> OIHW,
transposed); ``batch_normalization[_k]`` -> the k-th ``*.bn``: beta -> bias, moving_mean -> running_mean,
moving_variance -> running_var, gamma -> weight (Keras' InceptionV3 has ``scale=False``: weight = 1);
``predictions`` kernel (in, out) -> ``fc.weight`` (out, in, transposed), bias -> ``fc.bias``. Layers are
matched by creation order, i.e. the numeric suffix of their auto-generated names, never by the order they
are stored in the file (alphabetical: conv2d_10 before conv2d_2). Keras pools with padding excluded, so
the model is built with ``count_include_pad=False``; Keras has no aux head.
"""
from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ...models.inception import BasicConv2d, inception_v3
from ..errors import WeightsError
from ..io import check_finite

# Keras 3 .weights.h5 files name layers by class and position in ``model.layers`` (the Functional graph's
# topological order: conv2d, conv2d_1, ...), not by layer name. Entry k is the creation index of the
# k-th Conv2D (and BatchNormalization) in that order for keras.applications.InceptionV3, as read from
# Keras 3.15; the Keras-3 parity test in tests/test_convert.py checks it.
KERAS3_CREATION_INDEX = (
    0, 1, 2, 3, 4, 8, 6, 9, 5, 7, 10, 11, 15, 13, 16, 12, 14, 17, 18, 22, 20, 23, 19, 21, 24, 25, 27, 28,
    26, 29, 34, 35, 31, 36, 32, 37, 30, 33, 38, 39, 44, 45, 41, 46, 42, 47, 40, 43, 48, 49, 54, 55, 51, 56,
    52, 57, 50, 53, 58, 59, 64, 65, 61, 66, 62, 67, 60, 63, 68, 69, 72, 73, 70, 74, 71, 75, 80, 77, 81, 78,
    79, 82, 83, 76, 84, 89, 86, 90, 87, 88, 91, 92, 85, 93,
)

log = logging.getLogger(__name__)

_KERAS_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}


def conv_order() -> list[str]:
    """Our conv blocks (``Conv2d_1a_3x3``, ``Mixed_5b.branch1x1`` ...) in the order Keras creates them.

    That order is our constructor's, minus the aux head (Keras has none): both follow the same graph code
    branch by branch.
    """
    with torch.device("meta"):
        model = inception_v3(num_classes=1, aux_logits=False, init_weights=False)
    return [name for name, m in model.named_modules() if isinstance(m, BasicConv2d)]


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

    layers: dict[str, dict[str, torch.Tensor]] = {}
    source: Path | io.BytesIO = path
    if zipfile.is_zipfile(path):
        source = _keras_archive_weights(path)
    try:
        with h5py.File(source, "r") as f:
            keras3 = "layers" in f and "layer_names" not in f.attrs
            if keras3:
                # Keras 3 .weights.h5: layers/<name>/vars/<i>, variables in creation order.
                for name, group in f["layers"].items():
                    if "vars" in group and len(group["vars"]):
                        values = [group["vars"][str(i)] for i in range(len(group["vars"]))]
                        layers[name] = _name_keras3_vars(name, [np.asarray(v) for v in values])
            else:
                # Keras 2 save_weights / save: (model_weights/)<name>/ with a weight_names attribute.
                root = f.get("model_weights", f)
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


_ARCHIVE_WEIGHTS = "model.weights.h5"   # where a Keras 3 .keras archive keeps its weights


def _keras_archive_weights(path: Path) -> io.BytesIO:
    """The weights file inside a Keras 3 ``.keras`` archive, in memory (h5py reads file-like objects)."""
    try:
        with zipfile.ZipFile(path) as z:
            if _ARCHIVE_WEIGHTS not in z.namelist():
                raise WeightsError(f"{path}: a zip archive without {_ARCHIVE_WEIGHTS}; not a Keras 3 .keras "
                                   f"file (save one with model.save('model.keras'))")
            return io.BytesIO(z.read(_ARCHIVE_WEIGHTS))
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: unreadable .keras archive ({e}); it may be truncated") from None


def _name_keras3_vars(layer: str, values: list) -> dict[str, torch.Tensor]:
    t = [torch.from_numpy(v.copy()) for v in values]
    if layer.startswith("batch_normalization"):
        names = ["gamma", "beta", "moving_mean", "moving_variance"][-len(t):]   # gamma only if scale=True
    else:   # conv2d, dense
        names = ["kernel", "bias"][:len(t)]
    return dict(zip(names, t))


def keras_state_dict(path: str | os.PathLike, num_classes: int | None = None) -> dict[str, torch.Tensor]:
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
    check_finite(sd, path)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def keras_config(sd: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments of the InceptionV3 a Keras state dict (``keras_state_dict``) fits."""
    # Keras' AveragePooling2D(padding="same") excludes the padding from each average.
    return {"num_classes": int(sd["fc.weight"].shape[0]), "aux_logits": False, "count_include_pad": False}
