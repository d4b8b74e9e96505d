"""The feature taps: one table of named points in InceptionV3 (channels, reduction) that drives feature
extraction, ``forward_intermediates`` and the metric taps. Torch-free, so command parsers can list them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
    """``taps`` (one name or several) as a list, after checking every name is in ``TAPS``."""
    if isinstance(taps, str):
        taps = [taps]
    unknown = [t for t in taps if t not in TAPS]
    if unknown:
        raise ValueError(f"unknown tap(s) {unknown}; known taps: {', '.join(TAPS)}")
    return list(taps)
