"""``convert()``, the one entry of the converters: read a source's file with its module, check every tensor
through the strict loader, and write our self-describing .safetensors file."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ...models.builder import build_model
from ..errors import WeightsError
from ..hub import sha256_file
from ..io import save_model
from ..load import apply_state_dict, entry_for_sha
from ..registry import TF_PREPROCESS, imagenet_class_names
from . import SOURCES
from .keras import keras_config, keras_state_dict
from .pytorch import torch_preprocess, torch_state_dict
from .tfslim import slim_class_names, slim_state_dict

log = logging.getLogger(__name__)


def convert(src: str | os.PathLike, source: str, out: str | os.PathLike, num_classes: int | None = None,
            keep_background: bool = False, ema: bool = False) -> dict:
    """Convert ``src`` (weights from ``source``, one of SOURCES) into our .safetensors file ``out``.

    ``num_classes``: a fresh classifier for a Keras no-top file. TF-slim: ``keep_background`` keeps the
    1001st (background, index 0) class, ``ema`` takes the ExponentialMovingAverage copies of the weights.
    ``src`` for TF-slim is a V1 ``.ckpt`` file, or a V2 checkpoint's prefix or ``.index`` file.
    Preprocessing: a registry entry matched by hash wins for torch-family files; TF's preset for Keras and
    TF-slim. Returns {"path", "tensors", "model_config", "sha256"}. Raises WeightsError naming the file
    and the fix.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    src = Path(src)
    names: list[str] | None = None
    if source == "tf-slim":
        sd, found = slim_state_dict(src, keep_background=keep_background, ema=ema)
        config = found["config"]
        src = found["files"][0]   # the V1 file or the V2 index (it holds every data file's crc)
        digest = sha256_file(src)
        preprocess = TF_PREPROCESS
        names = slim_class_names(config["num_classes"])
    else:
        if not src.is_file():
            raise WeightsError(f"{src}: no such weights file")
        digest = sha256_file(src)
        entry = entry_for_sha(digest)
        if source == "keras":
            sd = keras_state_dict(src, num_classes=num_classes)
            config = keras_config(sd)
            preprocess = TF_PREPROCESS
        else:
            sd, config = torch_state_dict(src, source)
            preprocess = entry.preprocess if entry is not None else torch_preprocess(source, str(src))
        if entry is not None and entry.num_classes == config["num_classes"]:
            names = entry.categories()
        elif source != "fid":   # Keras, torchvision and timm order ImageNet's classes alike
            names = imagenet_class_names(config["num_classes"])
    model = build_model("inception_v3", **config, init_weights=False)
    apply_state_dict(model, sd, str(src), strict=True)   # every key and shape checked
    path = save_model(model, out, class_names=names, preprocess=preprocess,
                      extra={"converted_from": source, "source_file": src.name, "source_sha256": digest})
    log.info("converted %s (%s, %d tensors) to %s", src, source, len(sd), path)
    return {"path": path, "tensors": len(sd), "model_config": dict(model.config), "sha256": digest}
