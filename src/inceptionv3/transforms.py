"""Preprocessing presets and image decoding that survives real folders.

Three concerns live here because every entry point needs all three together:

* `Preprocess`: what a weights entry or saved model says about its inputs (sizes, interpolation,
  mean/std), and the eval/train transforms built from it;
* `load_image`: open any file PIL understands and return a plain 8-bit RGB or L image, or raise an
  `ImageError` with a short human reason (never a PIL traceback);
* `expand_paths`: turn command-line inputs (files, folders, globs, ``@list.txt``) into a list of files.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")
_PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                 "nearest": Image.Resampling.NEAREST}
_GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------------------------------
# Preprocess presets
# --------------------------------------------------------------------------------------------------


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
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Preprocess.{name} must be a positive integer, got {value!r}")
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
            raise ValueError(f"Preprocess.from_dict expects a dict, got {type(d).__name__}")
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
        raise ValueError(f"Preprocess.{name} must be 3 numbers, got {value!r}")
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
        pre, S, interp = self.pre, self.pre.input_size, _PIL_RESAMPLE[self.pre.interpolation]
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


# --------------------------------------------------------------------------------------------------
# Robust image loading
# --------------------------------------------------------------------------------------------------


class ImageError(ValueError):
    """An image that cannot be used; `reason` is short and human (shown next to the path)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when pickled across worker processes
        return (type(self), (self.path, self.reason))


class InputError(ValueError):
    """Bad command-line inputs: no such file, a glob that matches nothing, no images at all."""


_BOMB_HINT = (
    "if you trust this file, raise the limit with PIL.Image.MAX_IMAGE_PIXELS = <pixels> (or None)"
)


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode one file into a fully loaded 8-bit 'RGB' (or 'L') image.

    Applies EXIF orientation, takes the first frame of animations, composites transparency on white,
    scales 16/32-bit images to 8 bits. PIL's decompression-bomb limit stays in force; every failure is
    an `ImageError(path, reason)`.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageError(p, "is a directory, not an image file")
        if not p.exists():
            raise ImageError(p, "no such file")
        if p.stat().st_size == 0:
            raise ImageError(p, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS; treat that as the limit, too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()  # force full decode now: truncation shows up here, not later in a worker
                img = _exif_upright(im, p)
                return _to_mode(img, mode, p)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        reason = f"image is larger than the decompression-bomb limit ({e}); {_BOMB_HINT}"
        raise ImageError(p, reason) from None
    except PermissionError:
        raise ImageError(p, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(p, "not an image PIL can read") from None
    except FileNotFoundError:
        raise ImageError(p, "no such file") from None
    except IsADirectoryError:
        raise ImageError(p, "is a directory, not an image file") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # PIL reports broken data through all of these depending on the codec.
        log.debug("decoding %s failed: %r", p, e)
        raise ImageError(p, "truncated or corrupt image data") from None


def _exif_upright(im: Image.Image, path: Path) -> Image.Image:
    """Rotate/flip per EXIF orientation; broken EXIF should not cost an otherwise good image."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - any EXIF parsing failure: keep pixels as stored
        log.debug("ignoring unreadable EXIF in %s: %r", path, e)
        return im.copy()
    return out if out is not None else im.copy()


def _to_mode(im: Image.Image, mode: str, path: Path) -> Image.Image:
    """Any PIL mode -> 8-bit 'RGB' or 'L'."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = _high_depth_to_l(im)
    if "transparency" in im.info or im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Alpha (or a palette/colour-key transparency) over white: what a viewer shows on a page.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        im = white
    if im.mode == mode:
        return im
    try:
        return im.convert(mode)  # covers 1, L, P, CMYK, YCbCr, RGB <-> L
    except ValueError as e:
        raise ImageError(path, f"unsupported image mode {im.mode} ({e})") from None


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit grey -> 8-bit 'L' by scaling the value range, never by clipping.

    I;16 (and 'I' holding values within 0..65535, as older Pillow decodes 16-bit PNG) map 0..65535 onto
    0..255. Float images in [0, 1] scale by 255, in [0, 255] pass through; anything else (negative or
    larger values) is stretched from its own min..max.
    """
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257.0  # 65535 / 257 == 255 exactly
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif im.mode == "F" and lo >= 0 and hi <= 255:
        pass
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


# --------------------------------------------------------------------------------------------------
# Command-line inputs -> files
# --------------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under `folder`, recursively, sorted; extension match is case-insensitive.

    Hidden files and folders (leading '.') are skipped: they are editor/OS droppings, not data.
    """
    exts = _normalise_exts(extensions)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                found.append(Path(dirpath, name))
    return sorted(found)


def expand_paths(
    inputs: Sequence[str | os.PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """Files, folders (recursive), glob patterns and ``@list.txt`` files -> image paths.

    Files named explicitly are kept whatever their extension; folder and glob results are filtered by
    `extensions`. Order follows the inputs (each folder/glob sorted); exact duplicates are dropped.
    ``@list.txt`` holds one path, folder or glob per line ('#' comments and blank lines ignored;
    relative entries are relative to the list file's folder).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no inputs given (expected image files, folders, glob patterns or @list.txt)")
    exts = _normalise_exts(extensions)
    out: dict[Path, None] = {}  # ordered set
    for item in inputs:
        if isinstance(item, str) and item.startswith("@"):
            for entry in _read_list(Path(item[1:])):
                for p in _expand_one(entry, exts):
                    out.setdefault(p)
        else:
            for p in _expand_one(item, exts):
                out.setdefault(p)
    if not out:
        raise InputError(
            f"no images found in {', '.join(map(str, inputs))} "
            f"(image extensions: {', '.join(sorted(exts))}, case-insensitive; hidden files skipped)"
        )
    return list(out)


def _expand_one(item: str | os.PathLike, exts: frozenset[str]) -> list[Path]:
    p = Path(item)
    if p.is_dir():
        found = list_images(p, exts)
        if not found:
            log.warning("no images in folder %s (extensions: %s)", p, ", ".join(sorted(exts)))
        return found
    if p.exists():
        return [p]
    text = os.fspath(item)
    if any(c in _GLOB_CHARS for c in text):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise InputError(f"{text}: pattern matched no files")
        found = []
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                found.extend(list_images(mp, exts))
            elif mp.suffix.lower() in exts:
                found.append(mp)
        return found
    raise InputError(f"{text}: no such file or directory")


def _read_list(list_path: Path) -> list[str]:
    try:
        text = list_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"@{list_path}: list file not found") from None
    except IsADirectoryError:
        raise InputError(f"@{list_path}: is a directory, expected a text file of paths") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"@{list_path}: cannot read list file ({e})") from None
    base = list_path.parent
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = os.path.expanduser(line)
        entries.append(entry if os.path.isabs(entry) else os.path.join(base, entry))
    return entries


def _normalise_exts(extensions: Iterable[str]) -> frozenset[str]:
    if isinstance(extensions, str):
        extensions = [extensions]
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
