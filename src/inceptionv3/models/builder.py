"""InceptionV3 as released, and the compact two-module network from the project's source document.

The network follows the graph that torchvision, timm, Keras and TF-slim all ship (Szegedy et al.,
"Rethinking the Inception Architecture for Computer Vision", 2015). It differs from the paper's Table 1:

- stem: Table 1 lists conv 3x3/2, conv 3x3, conv padded 3x3, pool, then three 3x3 convs (80, 192, 288
  channels). The released graph uses pool -> 1x1 conv (80) -> 3x3 conv (192) -> pool, and the first
  Inception blocks take 192 channels at 35x35;
- Table 1 has 3 / 5 / 2 modules per grid size; the released graph has 3 (Mixed_5b-5d), 4 (Mixed_6b-6e)
  and 2 (Mixed_7b-7c), with the grid reductions Mixed_6a and Mixed_7a written as their own blocks;
- the 35x35 blocks keep one 5x5 conv branch (Figure 5 replaces every 5x5 by two 3x3s);
- batch norm follows every conv (the paper's "BN-auxiliary" applies it to the aux head only),
  and the aux head sits on Mixed_6e (17x17).

Every conv is Conv(bias=False) + BatchNorm(eps=0.001) + ReLU. State-dict keys equal torchvision's, so
torchvision and timm checkpoints load with ``strict=True``.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .base import AUX_MIN_INPUT_SIZE, MIN_INPUT_SIZE
from .inception import inception_v3
from .mini import MINI_MIN_INPUT_SIZE, InceptionMini, inception_mini

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "inception_v3": inception_v3,
    "inception_mini": inception_mini,
}


# The TF "2015-12-05" graph that FID, KID and the Inception Score are defined on (pytorch-fid's port):
# 1008 classes, no aux head, TF's padding-excluded average pools, a max-pool in Mixed_7c's pool branch.
FID_GRAPH: dict[str, object] = {"num_classes": 1008, "aux_logits": False, "count_include_pad": False,
                                "last_pool": "max"}


def build_model(arch: str, **config) -> nn.Module:
    """Build a network by name with its constructor arguments (as saved in ``model.config``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if arch == "inception_mini":
        # Options that only InceptionV3 has are meaningless here; refuse rather than ignore them silently.
        extra = {k for k in config if k not in ("num_classes", "dropout", "in_chans")}
        if config.get("aux_logits") is False:
            extra.discard("aux_logits")
        if extra:
            raise ValueError(f"inception_mini does not take {sorted(extra)}")
        config = {k: v for k, v in config.items() if k != "aux_logits"}
    return ARCHS[arch](**config)


def min_input_size(model: nn.Module, with_aux: bool = False) -> int:
    """Smallest image side this model accepts."""
    if isinstance(model, InceptionMini):
        return MINI_MIN_INPUT_SIZE
    return AUX_MIN_INPUT_SIZE if with_aux else MIN_INPUT_SIZE
