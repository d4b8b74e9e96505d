"""What the tool keeps on disk between runs, listed with sizes (``cache_report``) and removed
(``clear_cache``): downloaded weights and the engines' exported graphs. Only files the tool made are
counted or removed: the registry's cached files, the recorded digests, the engines' digest-named graphs
and their records, and temporary files of writers that are gone; anything else in those folders is left
alone and reported. Torch-free, so the command answers without loading torch."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.files import clean_stale_temps
from .hub import cache_dir, cache_path, pins_file, torch_hub_dir, weights_dir
from .registry import REGISTRY

log = logging.getLogger(__name__)

AREAS = ("weights", "engines")
# The engine cache's files: <32 hex digits>[.int8].onnx, and the sha256 record written beside each.
_ENGINE_FILE = re.compile(r"^[0-9a-f]{32}(\.int8)?\.onnx(\.sha256)?$")


@dataclass
class CacheArea:
    """One cache folder: the files the tool made there, their total size, and what else it holds."""
    name: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    size: int = 0
    foreign: list[Path] = field(default_factory=list)   # files inceptionv3 did not make


def engines_dir() -> Path:
    """Where the engines keep their exported graphs: cache_dir()/cache/engines."""
    return cache_dir() / "cache" / "engines"


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()   # never count or delete through a symlink


def _scan(name: str, folder: Path, ours: set[Path], pattern: re.Pattern | None) -> CacheArea:
    area = CacheArea(name, folder)
    if not folder.is_dir():
        return area
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
        for f in files:
            path = Path(root, f)
            if not _is_file(path):
                continue
            if path in ours or pattern is not None and pattern.match(f) and path.parent == folder:
                area.files.append(path)
                area.size += path.lstat().st_size
            else:
                area.foreign.append(path)
    area.files.sort()
    area.foreign.sort()
    return area


def cache_report(areas: tuple[str, ...] = AREAS) -> list[CacheArea]:
    """The cache folders named in ``areas`` ("weights", "engines") with the files the tool made there."""
    out = []
    if "weights" in areas:
        ours = {cache_path(e) for e in REGISTRY.values()} | {pins_file()}
        out.append(_scan("weights", weights_dir(), ours, None))
    if "engines" in areas:
        out.append(_scan("engines", engines_dir(), set(), _ENGINE_FILE))
    return out


def torch_hub_files() -> list[Path]:
    """Registry files torch.hub already holds (read in place when they pass the hash, never removed)."""
    folder = torch_hub_dir()
    return sorted(p for p in {folder / e.file_name for e in REGISTRY.values()} if _is_file(p))


def clear_cache(areas: tuple[str, ...] = AREAS) -> list[CacheArea]:
    """Remove the files the tool made in the cache folders named in ``areas``; returns what was removed
    (and, as ``foreign``, what was left because the tool did not make it)."""
    removed = cache_report(areas)
    for area in removed:
        for path in area.files:
            path.unlink(missing_ok=True)
            log.debug("removed %s", path)
        for path in clean_stale_temps(area.folder):   # interrupted downloads and exports
            area.files.append(path)
        # An entry stored under its own folder (generic file names) leaves an empty folder behind.
        for entry in REGISTRY.values():
            parent = cache_path(entry).parent
            if area.name == "weights" and parent != area.folder and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    return removed
