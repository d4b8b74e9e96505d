"""Image decoding that survives real folders: ``load_image`` opens any file PIL understands and returns a
plain, fully loaded 8-bit RGB or L image, or raises an ``ImageError`` with a short human reason (never a
PIL traceback); ``check_image_size`` and ``check_resize`` bound the work one image may cause before it is
allocated; ``PIL_RESAMPLE`` maps the interpolation names of ``Preprocess`` to PIL's filters.

Every message names the file (quoted as ``runtime.files.quote_path`` does when its name needs it).
"""
from __future__ import annotations

import io
import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..runtime.files import os_error_reason, quote_path

log = logging.getLogger(__name__)


PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                 "nearest": Image.Resampling.NEAREST}


class ImageError(ValueError):
    """An image that cannot be used; `reason` is short and human (shown next to the path).

    The path may be None where it is not known (a transform sees pixels, not files): the dataset that
    called it names the file.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(reason if self.path is None else f"{quote_path(self.path)}: {reason}")

    def __reduce__(self):  # keep (path, reason) when pickled across worker processes
        return (type(self), (self.path, self.reason))


_BOMB_HINT = (
    "if you trust this file, raise the limit with PIL.Image.MAX_IMAGE_PIXELS = <pixels> (or None)"
)

# The work one image may cause. A photo is rarely wider than 20:1 (a wide panorama); beyond 100:1 the
# resize to the preprocessing's shorter side blows a tiny file up (1 x 20,000 px -> 342 x 6.8 M px, 7 GB).
MAX_ASPECT_RATIO = 100.0
# Pixels of the resized image before the crop: 2**25 (about 100 MB as 8-bit RGB) holds any image within
# the aspect bound resized to 579 px or less (the 144-crop scheme's largest scale of a 342 px preset is
# 470 px).
MAX_RESIZED_PIXELS = 1 << 25


def check_image_size(width: int, height: int, max_aspect: float | None = MAX_ASPECT_RATIO) -> None:
    """Refuse, before decoding, an image beyond PIL's decompression-bomb limit (``MAX_IMAGE_PIXELS``,
    read now) or ``max_aspect``: ``ImageError(None, reason)``.

    The limit is checked here rather than through PIL's warning, which cannot be caught per thread.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageError(None, f"{width}x{height} = {width * height:,} pixels is larger than the "
                               f"decompression-bomb limit of {int(limit):,} pixels; {_BOMB_HINT}")
    if max_aspect is not None and min(width, height) >= 1:
        ratio = max(width, height) / min(width, height)
        if ratio > max_aspect:
            raise ImageError(None, f"{width}x{height} px has an aspect ratio of {ratio:,.0f}:1, beyond the "
                                   f"{max_aspect:,.0f}:1 this tool resizes; crop or split the image")


def check_resize(width: int, height: int, new_width: int, new_height: int) -> None:
    """Refuse a resize whose result would exceed ``MAX_RESIZED_PIXELS``, before allocating it."""
    if new_width * new_height > MAX_RESIZED_PIXELS:
        raise ImageError(None, f"resizing {width}x{height} px as the preprocessing asks gives "
                               f"{new_width}x{new_height} px ({new_width * new_height:,} pixels, more than "
                               f"{MAX_RESIZED_PIXELS:,}); crop the image to a less extreme shape")


# PIL reports oddities (corrupt EXIF, palette transparency, malformed MPO) through `warnings`, printed
# without the file's name. While this thread decodes a file, the warnings it raises are collected here
# and logged with the file's name instead. `warnings.catch_warnings` swaps process-wide state and is not
# thread-safe, so the collection is per thread, behind one hook on `warnings.showwarning` that passes
# every other warning on unchanged. Python's filters still apply first: a warning that repeats word for
# word from the same line of PIL is shown once per process (the default filter), for the first file.
_collecting = threading.local()
_hook_lock = threading.Lock()


def _install_warning_hook() -> None:
    if getattr(warnings.showwarning, "_per_file", False):
        return
    with _hook_lock:
        shown = warnings.showwarning
        if getattr(shown, "_per_file", False):
            return

        def showwarning(message, category, filename, lineno, file=None, line=None):
            caught = getattr(_collecting, "messages", None)
            if caught is not None:
                caught.append(f"{category.__name__}: {message}")
                return
            shown(message, category, filename, lineno, file, line)

        showwarning._per_file = True
        warnings.showwarning = showwarning


@contextmanager
def _file_warnings() -> Iterator[list[str]]:
    """Collect the warnings this thread raises inside the block (see above)."""
    _install_warning_hook()
    outer = getattr(_collecting, "messages", None)
    _collecting.messages = caught = []
    try:
        yield caught
    finally:
        _collecting.messages = outer


def _file_reason(p: Path) -> str | None:
    """Why ``p`` cannot be read as an image file, from its metadata alone; None when it can be tried."""
    try:
        st = os.stat(p)
    except FileNotFoundError as e:
        return "no such file" if not os.path.islink(p) else os_error_reason(e, p)
    except OSError as e:
        return os_error_reason(e, p)
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device), not an image file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def load_image(path: str | os.PathLike, mode: str = "RGB", *,
               max_aspect: float | None = MAX_ASPECT_RATIO, data: bytes | None = None) -> Image.Image:
    """Decode one file into a fully loaded 8-bit 'RGB' (or 'L') image.

    Applies EXIF orientation, takes the first frame of animations, composites transparency on white,
    scales 16/32-bit images to 8 bits. Before decoding, the header's size is held to PIL's
    decompression-bomb limit and to ``max_aspect`` (``check_image_size``); every failure is an
    `ImageError(path, reason)`, and PIL's warnings about the file are logged with its name. Safe to call
    from several threads at once. ``data``: the file's bytes already in memory (an upload, an archive
    member), decoded with the same checks; ``path`` then only names it.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    p = Path(path)
    reason = _file_reason(p) if data is None else None if data else "empty file (0 bytes)"
    if reason is not None:
        raise ImageError(p, reason)
    try:
        with _file_warnings() as caught, Image.open(p if data is None else io.BytesIO(data)) as im:
            check_image_size(*im.size, max_aspect=max_aspect)
            im.load()  # force full decode now: truncation shows up here, not later in a worker
            img = _to_mode(_exif_upright(im, p), mode, p)
    except ImageError as e:
        raise ImageError(p, e.reason) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's own check, in Image.open (or its warning, where a filter makes it an error).
        raise ImageError(p, f"image is larger than the decompression-bomb limit ({e}); {_BOMB_HINT}") from None
    except UnidentifiedImageError:
        raise ImageError(p, "not an image PIL can read") from None
    except MemoryError:
        raise ImageError(p, "not enough memory to decode it") from None
    except OSError as e:
        if e.errno is not None:   # the file system's error (PIL's data errors carry no errno)
            raise ImageError(p, os_error_reason(e, p)) from None
        log.debug("decoding %s failed: %r", p, e)
        raise ImageError(p, "truncated or corrupt image data") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, Warning) as e:
        # PIL reports broken data through all of these depending on the codec (and warnings, where a
        # filter turns them into errors).
        log.debug("decoding %s failed: %r", p, e)
        raise ImageError(p, "truncated or corrupt image data") from None
    for message in caught:
        log.warning("%s: %s", quote_path(p), message)
    return img


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
