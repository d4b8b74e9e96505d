"""Command-line inputs to image files: ``expand_paths`` turns files, folders (recursive), globs and
``@list.txt`` files into a list of paths; ``list_images`` walks one folder; ``InputError`` is a bad input."""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)
_GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """Bad command-line inputs: no such file, a glob that matches nothing, no images at all."""


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
