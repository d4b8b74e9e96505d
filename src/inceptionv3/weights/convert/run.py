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
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import WeightsError
from ..hub import sha256_file
from ..io import read_state_dict, save_model
from ..load import apply_state_dict, entry_for_sha, infer_config
from ..preprocess import Preprocess
from ..registry import REGISTRY
from . import SOURCES
from .keras import keras_state_dict
from .tfslim import SLIM_BACKGROUND_CLASSES, slim_state_dict

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


# What each source's weights expect of their inputs when nothing better is known (a registry entry
# matched by hash wins). TF (Keras' preprocess_input, slim's inception_preprocessing) scales to [-1, 1]
# and evaluates a 0.875 central crop resized bilinearly to 299; timm: 299/0.875 -> floor 341, bicubic.
_TF_PREPROCESS = Preprocess(input_size=299, resize_size=342, interpolation="bilinear",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


_TIMM_PREPROCESS = Preprocess(input_size=299, resize_size=341, interpolation="bicubic",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _torch_config(sd: dict[str, torch.Tensor], source: str, label: str) -> tuple[str, dict]:
    arch, config = infer_config(sd, label)
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
    from ...models.builder import build_model
    from ..load import guess_preprocess

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
        entry = entry_for_sha(digest)
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
                preprocess = guess_preprocess(str(src))
        if entry is not None and entry.num_classes == config["num_classes"]:
            names = entry.categories()
    model = build_model(arch, **config, init_weights=False)
    apply_state_dict(model, sd, str(src), strict=True)   # every key and shape checked
    path = save_model(model, out, class_names=names, preprocess=preprocess,
                      extra={"converted_from": source, "source_file": src.name, "source_sha256": digest})
    log.info("converted %s (%s, %d tensors) to %s", src, source, len(sd), path)
    return {"path": path, "tensors": len(sd), "model_config": dict(model.config), "sha256": digest}
