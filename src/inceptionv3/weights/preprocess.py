"""``Preprocess``: what a network expects of its input images (sizes, interpolation, mean/std), stored
with weights entries and saved models. Torch-free, so entries and parsers can use it at no cost."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")
# The largest image side a network input or resize may have: far above any InceptionV3 preset, and small
# enough that a damaged or hostile file cannot make one image cost gigabytes.
MAX_SIDE = 4096


@dataclass(frozen=True)
class Preprocess:
    """What a network expects of its input images; stored with weights and saved models.

    Eval: resize the shorter side to `resize_size`, center-crop `input_size`, scale to [0, 1],
    normalise with `mean`/`std`. The defaults are torchvision's Inception V3 ImageNet preset.
    """

    input_size: int = 299
    resize_size: int = 342
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        for name in ("input_size", "resize_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIDE:
                raise ValueError(f"Preprocess.{name} must be an integer from 1 to {MAX_SIDE}, got {value!r}")
        if self.resize_size < self.input_size:
            raise ValueError(
                f"Preprocess.resize_size ({self.resize_size}) must be >= input_size ({self.input_size}): "
                "the center crop is taken from the resized image"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Preprocess.interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        for name in ("mean", "std"):
            # Lists come back from JSON; store tuples so the dataclass stays hashable and comparable.
            object.__setattr__(self, name, _three_floats(name, getattr(self, name)))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocess.std values must be > 0, got {self.std}")

    def to_dict(self) -> dict:
        """JSON-able form (tuples become lists); `from_dict(to_dict())` gives an equal object."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Inverse of `to_dict`; missing keys take defaults, unknown keys are an error (likely a typo)."""
        if not isinstance(d, dict):
            # ValueError like every other bad field: callers catch one type for unusable metadata.
            raise ValueError(f"Preprocess.from_dict expects a dict, got {type(d).__name__}")  # noqa: TRY004
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown Preprocess key(s): {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**d)


def _three_floats(name: str, value: object) -> tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"Preprocess.{name} must be 3 numbers, got {value!r}")  # noqa: TRY004
    items = list(value)
    if len(items) != 3:
        raise ValueError(f"Preprocess.{name} must be 3 numbers, got {len(items)}: {value!r}")
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"Preprocess.{name} must be 3 numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"Preprocess.{name} must be finite, got {value!r}")
    return out  # type: ignore[return-value]
