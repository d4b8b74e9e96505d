"""Preprocessing presets and image decoding that survives real folders.

Three concerns live here because every entry point needs all three together:

* `Preprocess`: what a weights entry or saved model says about its inputs (sizes, interpolation,
  mean/std), and the eval/train transforms built from it;
* `load_image`: open any file PIL understands and return a plain 8-bit RGB or L image, or raise an
  `ImageError` with a short human reason (never a PIL traceback);
* `expand_paths`: turn command-line inputs (files, folders, globs, ``@list.txt``) into a list of files.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from PIL import Image

from ..weights.preprocess import Preprocess
from .decode import PIL_RESAMPLE


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
        # one pass instead of five (1 ms -> 0.3 ms for a 299 px image, a tenth of the decode budget).
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1)
        self._offset = torch.tensor([-m / s for m, s in zip(mean, std)]).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != self.mode:
            img = img.convert(self.mode)
        x = TF.pil_to_tensor(img)                                 # C x H x W uint8 (a view of HWC bytes)
        out = torch.empty(x.shape, dtype=torch.float32)           # contiguous C x H x W
        return torch.addcmul(self._offset, x, self._scale, out=out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, mean={self.mean}, std={self.std})"


def eval_transform(pre: Preprocess, in_chans: int = 3) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic transform: resize shorter side, center crop, to [0, 1], normalise.

    Returns a picklable callable (safe in DataLoader worker processes) giving an
    in_chans x input_size x input_size float tensor.
    """
    mean, std = _channel_stats(pre, in_chans)
    return v2.Compose([
        v2.Resize(pre.resize_size, interpolation=_interp(pre.interpolation), antialias=True),
        v2.CenterCrop(pre.input_size),
        _ToTensor(mean, std),
    ])


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
        center = (int(round((w - size) / 2.0)), int(round((h - size) / 2.0)))   # as eval_transform's crop
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


def _resize_shorter(img: Image.Image, size: int, resample: int) -> Image.Image:
    w, h = img.size   # the longer side truncated, as eval_transform's Resize does
    if w <= h:
        return img.resize((size, int(size * h / w)), resample)
    return img.resize((int(size * w / h), size), resample)


def multi_crop_transform(pre: Preprocess, crops: int, in_chans: int = 3) -> Callable[[Image.Image], torch.Tensor]:
    """`eval_transform` for crops == 1; else a picklable transform giving crops x C x S x S (see MULTI_CROPS)."""
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

    Randomness comes from torch's global generator, which DataLoader seeds per worker.
    """
    mean, std = _channel_stats(pre, in_chans)
    steps: list[Callable] = [
        v2.RandomResizedCrop(
            pre.input_size, scale=scale, ratio=ratio, interpolation=_interp(pre.interpolation), antialias=True
        )
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(_ToTensor(mean, std))
    return v2.Compose(steps)


def _interp(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode(name)
