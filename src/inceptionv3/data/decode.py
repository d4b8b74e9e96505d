"""Image decoding that survives real folders: ``load_image`` opens any file PIL understands and returns a
plain, fully loaded 8-bit RGB or L image, or raises an ``ImageError`` with a short human reason (never a
PIL traceback); ``PIL_RESAMPLE`` maps the interpolation names of ``Preprocess`` to PIL's filters."""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)


PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                 "nearest": Image.Resampling.NEAREST}


class ImageError(ValueError):
    """An image that cannot be used; `reason` is short and human (shown next to the path)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when pickled across worker processes
        return (type(self), (self.path, self.reason))


_BOMB_HINT = (
    "if you trust this file, raise the limit with PIL.Image.MAX_IMAGE_PIXELS = <pixels> (or None)"
)


def load_image(path: str | os.PathLike, mode: str = "RGB", data: bytes | None = None) -> Image.Image:
    """Decode one file into a fully loaded 8-bit 'RGB' (or 'L') image.

    Applies EXIF orientation, takes the first frame of animations, composites transparency on white,
    scales 16/32-bit images to 8 bits. PIL's decompression-bomb limit stays in force; every failure is
    an `ImageError(path, reason)`. ``data``: the file's bytes already in memory (an upload), decoded
    with the same checks; ``path`` then only names it.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    p = Path(path)
    try:
        if data is not None:
            if not data:
                raise ImageError(p, "empty file (0 bytes)")
        elif p.is_dir():
            raise ImageError(p, "is a directory, not an image file")
        elif not p.exists():
            raise ImageError(p, "no such file")
        elif p.stat().st_size == 0:
            raise ImageError(p, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS; treat that as the limit, too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p if data is None else io.BytesIO(data)) as im:
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
