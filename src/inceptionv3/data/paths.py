"""Command-line inputs to image files: ``expand_paths`` turns files, folders (recursive), globs and
``@list.txt`` files into a list of paths; ``list_images`` walks one folder; ``InputError`` is a bad input."""
from __future__ import annotations

import errno
import glob
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..runtime.files import os_error_reason, quote_path, unquote_path

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

    def unreadable(e: OSError) -> None:
        where = e.filename if e.filename is not None else folder
        log.warning("%s: cannot list this folder (%s); its images are skipped", quote_path(where),
                    os_error_reason(e, where))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
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
    relative entries are relative to the list file's folder; a name with a newline or other odd
    characters is written as a JSON string, as ``runtime.files.quote_path`` writes it). A path that is a
    symlink which cannot be followed (a loop, a missing target) is kept: decoding names the reason.
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
    text = os.fspath(item)
    try:
        st = os.stat(p)
    except OSError as e:
        if os.path.lexists(p):
            return [p]   # a symlink that cannot be followed (a loop, a missing target): decoding says why
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{quote_path(text)}: {os_error_reason(e, p)}") from None
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        found = list_images(p, exts)
        if not found:
            log.warning("no images in folder %s (extensions: %s)", quote_path(p), ", ".join(sorted(exts)))
        return found
    if st is not None:
        return [p]
    if any(c in _GLOB_CHARS for c in text):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise InputError(f"{quote_path(text)}: pattern matched no files")
        found = []
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                found.extend(list_images(mp, exts))
            elif mp.suffix.lower() in exts:
                found.append(mp)
        return found
    raise InputError(f"{quote_path(text)}: no such file or directory")


def _read_list(list_path: Path) -> list[str]:
    """The entries of an ``@list.txt``: one per line, split on '\n' only; a line that starts with '"'
    is one JSON string (``runtime.files.quote_path`` writes names holding newlines or other odd
    characters so), any other line is taken with its surrounding white space stripped."""
    shown = quote_path(f"@{list_path}")
    try:
        # Names that are not UTF-8 come back as the bytes they were (surrogate escapes).
        text = list_path.read_text(encoding="utf-8", errors="surrogateescape")
    except IsADirectoryError:
        raise InputError(f"{shown}: is a directory, expected a text file of paths") from None
    except FileNotFoundError:
        raise InputError(f"{shown}: list file not found") from None
    except OSError as e:
        raise InputError(f"{shown}: cannot read list file ({os_error_reason(e, list_path)})") from None
    base = list_path.parent
    entries = []
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"'):
            try:
                line = unquote_path(line)
            except ValueError as e:
                raise InputError(f"{shown}, line {n}: {e}") from None
        entry = os.path.expanduser(line)
        entries.append(entry if os.path.isabs(entry) else os.path.join(base, entry))
    return entries


def _normalise_exts(extensions: Iterable[str]) -> frozenset[str]:
    if isinstance(extensions, str):
        extensions = [extensions]
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
