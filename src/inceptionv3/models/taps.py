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

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Tap:
    """A named point in the network whose output can be read out."""
    name: str
    channels: int      # 0 means "num_classes" (the logits tap)
    reduction: int     # input size / feature-map size, roughly (0 for pooled vectors)


# One table drives feature extraction, intermediate outputs and the metric taps.
TAPS: dict[str, Tap] = {t.name: t for t in (
    Tap("Conv2d_2b_3x3", 64, 2),
    Tap("maxpool1", 64, 4),
    Tap("Conv2d_4a_3x3", 192, 4),
    Tap("maxpool2", 192, 8),
    Tap("Mixed_5d", 288, 8),
    Tap("Mixed_6e", 768, 16),
    Tap("Mixed_7c", 2048, 32),
    Tap("pool", 2048, 0),
    Tap("logits", 0, 0),
)}


def validate_taps(taps: Sequence[str]) -> list[str]:
    if isinstance(taps, str):
        taps = [taps]
    unknown = [t for t in taps if t not in TAPS]
    if unknown:
        raise ValueError(f"unknown tap(s) {unknown}; known taps: {', '.join(TAPS)}")
    return list(taps)
