"""The transforms a ``Preprocess`` describes, PIL image -> normalised float tensor: eval (resize the shorter
side, center crop), multi-crop evaluation, and the training augmentation.

The eval and multi-crop transforms are PIL and torch only, with the same output as torchvision's
Resize + CenterCrop: importing torchvision costs more than a short inference job computes, so it is
imported only when a training augmentation is built. Every transform is picklable (DataLoader workers).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from ..weights.preprocess import Preprocess
from .decode import PIL_RESAMPLE, check_resize


def _channel_stats(pre: Preprocess, in_chans: int) -> tuple[list[float], list[float]]:
    """Mean/std per input channel.

    For one-channel networks we use the average of the three RGB values. Weights adapted from RGB sum
    the first conv over its colour channels (see weights.load_weights); a grey image fed to the RGB
    net as three equal channels gives the same activations exactly when the three means and stds are
    equal (true for the 0.5 presets), and the average is the closest single value otherwise.
    """
    if in_chans == 3:
        return list(pre.mean), list(pre.std)
    if in_chans == 1:
        return [sum(pre.mean) / 3], [sum(pre.std) / 3]
    raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")


class _ToTensor:
    """PIL image -> normalised float tensor (C x H x W), converting to the mode the net needs.

    Converting here (not only in `load_image`) lets the same transform take the 8x8 'L' digits or a
    user's RGB image for either a 1- or 3-channel network.
    """

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = mean, std
        self.mode = "L" if len(mean) == 1 else "RGB"
        # (x / 255 - mean) / std as one multiply-add per pixel, read from the HWC bytes and written CHW:
        # one pass over the image instead of five.
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1)
        self._offset = torch.tensor([-m / s for m, s in zip(mean, std)]).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != self.mode:
            img = img.convert(self.mode)
        hwc = torch.from_numpy(np.array(img)).view(img.height, img.width, -1)   # uint8 H x W x C (a copy)
        x = hwc.permute(2, 0, 1)                                  # C x H x W view
        out = torch.empty(x.shape, dtype=torch.float32)           # contiguous C x H x W
        return torch.addcmul(self._offset, x, self._scale, out=out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, mean={self.mean}, std={self.std})"


def _resize_shorter(img: Image.Image, size: int, resample: int) -> Image.Image:
    """Shorter side to ``size``, the longer one scaled and truncated (torchvision's Resize(size)).

    A result beyond ``decode.MAX_RESIZED_PIXELS`` is refused (``ImageError``) before it is allocated.
    """
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new == (w, h):
        return img
    check_resize(w, h, *new)
    return img.resize(new, resample)


def _center_box(w: int, h: int, size: int) -> tuple[int, int]:
    """(left, top) of the centered ``size`` square, rounded as torchvision's CenterCrop rounds."""
    return round((w - size) / 2.0), round((h - size) / 2.0)


class _Eval:
    """PIL image -> C x S x S tensor: shorter side to resize_size, center crop input_size, normalise."""

    def __init__(self, pre: Preprocess, to_tensor: _ToTensor) -> None:
        self.resize_size, self.input_size = pre.resize_size, pre.input_size
        self.interpolation = pre.interpolation
        self.to_tensor = to_tensor

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = _resize_shorter(img, self.resize_size, PIL_RESAMPLE[self.interpolation])
        left, top = _center_box(*img.size, self.input_size)
        return self.to_tensor(img.crop((left, top, left + self.input_size, top + self.input_size)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(resize={self.resize_size}, crop={self.input_size}, "
                f"interpolation={self.interpolation!r}, {self.to_tensor!r})")


def eval_transform(pre: Preprocess, in_chans: int = 3) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic transform: resize shorter side, center crop, to [0, 1], normalise.

    Returns a picklable callable (safe in DataLoader worker processes) giving an
    in_chans x input_size x input_size float tensor.
    """
    return _Eval(pre, _ToTensor(*_channel_stats(pre, in_chans)))


# Multi-crop evaluation. The paper reports 12-crop and 144-crop results without defining the crops; we use
# GoogLeNet's 144-crop scheme, which it refers to: 4 scales (shorter side resize_size x 1, 9/8, 10/8, 11/8)
# x 3 squares along the longer side (first, middle, last) x 6 views (4 corners, center, the whole square
# resized) x 2 (mirrored). 12 crops: that scheme at the base scale on the middle square. 10 crops: the
# common ten-crop (4 corners and center of the resized image, and their mirror images).
MULTI_CROPS = (1, 10, 12, 144)
_SCALES_144 = (1.0, 9 / 8, 10 / 8, 11 / 8)


class _MultiCrop:
    """PIL image -> K x C x S x S tensor of the K crops above (K in MULTI_CROPS, K > 1)."""

    def __init__(self, pre: Preprocess, crops: int, to_tensor: _ToTensor) -> None:
        if crops not in MULTI_CROPS[1:]:
            raise ValueError(f"crops must be one of {', '.join(map(str, MULTI_CROPS))}, got {crops!r}")
        self.pre, self.crops, self.to_tensor = pre, crops, to_tensor

    def _views(self, img: Image.Image, size: int) -> list[Image.Image]:
        w, h = img.size
        center = _center_box(w, h, size)   # as eval_transform's crop
        corners = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size), center]
        return [img.crop((x, y, x + size, y + size)) for x, y in corners]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        pre, S, interp = self.pre, self.pre.input_size, PIL_RESAMPLE[self.pre.interpolation]
        views: list[Image.Image] = []
        if self.crops == 10:
            views = self._views(_resize_shorter(img, pre.resize_size, interp), S)
        else:
            scales = _SCALES_144 if self.crops == 144 else _SCALES_144[:1]
            for f in scales:
                scaled = _resize_shorter(img, round(pre.resize_size * f), interp)
                w, h = scaled.size
                side = min(w, h)
                squares = [0, (max(w, h) - side) // 2, max(w, h) - side]
                for off in (squares if self.crops == 144 else squares[1:2]):
                    box = (off, 0, off + side, side) if w >= h else (0, off, side, off + side)
                    square = scaled.crop(box)
                    views += self._views(square, S) + [square.resize((S, S), interp)]
        views += [v.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for v in views]
        return torch.stack([self.to_tensor(v) for v in views])


def multi_crop_transform(pre: Preprocess, crops: int,
                         in_chans: int = 3) -> Callable[[Image.Image], torch.Tensor]:
    """`eval_transform` for crops == 1; else a picklable transform giving crops x C x S x S (MULTI_CROPS)."""
    if crops == 1:
        return eval_transform(pre, in_chans)
    return _MultiCrop(pre, crops, _ToTensor(*_channel_stats(pre, in_chans)))


def train_transform(
    pre: Preprocess,
    in_chans: int = 3,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
) -> Callable[[Image.Image], torch.Tensor]:
    """Random-resized-crop augmentation (the Inception recipe) + optional horizontal flip + normalise.

    Randomness comes from torch's global generator, which DataLoader seeds per worker. Built from
    torchvision's transforms (imported here, the only place that needs them).
    """
    from torchvision.transforms import v2

    mean, std = _channel_stats(pre, in_chans)
    steps: list[Callable] = [
        v2.RandomResizedCrop(pre.input_size, scale=scale, ratio=ratio,
                             interpolation=v2.InterpolationMode(pre.interpolation), antialias=True)
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(_ToTensor(mean, std))
    return v2.Compose(steps)
