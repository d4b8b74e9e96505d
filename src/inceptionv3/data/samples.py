"""Sample sets stored as generators write them, read in place: ZIP archives, ``.npy`` / ``.npz`` arrays and
WebDataset tar shards.

* ZIP: any images inside, in name order, as StyleGAN/EDM's ``dataset_tool`` writes them (``00000/
  img00000000.png``, with labels in ``dataset.json`` where present); members are read from the archive,
  never extracted.
* ``.npy`` / ``.npz``: uint8 images, N x H x W x C as ADM / guided-diffusion store them (under ``arr_0``)
  or N x C x H x W (C 1 or 3; N x H x W is grey). ``.npy`` files and uncompressed ``.npz`` members are
  memory-mapped (the member's data lies at a fixed offset in the zip), so only the images a batch needs
  are read; a compressed member is read into memory once.
* Tar shards: ``shards-{000..099}.tar`` (braces as WebDataset expands them), a glob or one ``.tar``,
  read by the ``webdataset`` library (the ``archives`` extra); each sample's first image member is used.

An ``.npz`` holding ``mu`` and ``sigma`` is a statistics file, not a sample set (``npz_holds_statistics``).
Every set is a torch ``Dataset`` whose items are ``(image tensor or None, name, reason or None)``; the name
is ``archive:member`` (``file.npz[17]`` for arrays), so a member that fails to decode is reported like a bad
file and the rest go on. ``sample_batches`` decodes them in worker processes while the caller computes.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..runtime.threads import available_cores, torch_threads
from .decode import ImageError, load_image
from .loaders import in_process_batches
from .paths import IMAGE_EXTENSIONS, InputError

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]
SampleItem = tuple[torch.Tensor | None, str, str | None]

# Members larger than this (uncompressed) are refused unread: a 64 px PNG is kilobytes, a 4k one tens of
# megabytes; a member claiming more is a zip bomb or not an image.
MAX_MEMBER_BYTES = 512 * 2**20
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_ARCHIVES = "ZIP archive (.zip), image array (.npy / .npz) or tar shards (.tar, shards-{000..009}.tar)"


@dataclass
class SampleBatch:
    """Decoded images of one batch, their names, and the (name, reason) of the members that failed."""
    images: torch.Tensor
    names: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)

    def pin_memory(self) -> SampleBatch:  # called by DataLoader(pin_memory=True)
        return SampleBatch(self.images.pin_memory(), self.names, self.failures)


def collate_samples(items: Sequence[SampleItem]) -> SampleBatch:
    """Stack the decoded images of a batch and list its failures (the DataLoader's collate_fn)."""
    good = [(x, name) for x, name, _ in items if x is not None]
    failures = [(name, reason) for x, name, reason in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else torch.empty(0)
    return SampleBatch(images, [name for _, name in good], failures)


def npz_holds_statistics(path: str | os.PathLike) -> bool:
    """Whether an ``.npz`` file is a statistics file (members ``mu`` and ``sigma``) rather than images.

    A file that is not a readable zip counts as statistics, so the statistics reader names what is wrong.
    """
    try:
        with zipfile.ZipFile(path) as z:
            keys = {Path(n).stem for n in z.namelist()}
    except (OSError, zipfile.BadZipFile):
        return True
    return {"mu", "sigma"} <= keys


def _is_tar_name(text: str) -> bool:
    return text.lower().endswith(_TAR_SUFFIXES)


def is_sample_set(source: Any) -> bool:
    """Whether ``source`` (a path or pattern) names a sample set this module reads; folders, image files,
    globs of images, ``@lists`` and statistics files do not."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if text.startswith("@"):
        return False
    p = Path(text)
    suffix = p.suffix.lower()
    if p.is_dir():
        return False
    if suffix in (".zip", ".npy"):
        return True
    if suffix == ".npz":
        return p.is_file() and not npz_holds_statistics(p)
    return _is_tar_name(text)


def open_samples(source: str | os.PathLike, transform: Transform | None = None,
                 mode: str = "RGB") -> ZipImages | ArrayImages | TarShards:
    """The sample set ``source`` names (see ``is_sample_set``), decoding with ``transform`` (set it before
    reading: ``samples.transform = ...``). Unreadable archives raise ``InputError`` naming the file."""
    text = os.fspath(source)
    suffix = Path(text).suffix.lower()
    if suffix == ".zip":
        return ZipImages(text, transform, mode)
    if suffix in (".npy", ".npz"):
        return ArrayImages(text, transform, mode)
    if _is_tar_name(text):
        return TarShards(text, transform, mode)
    raise InputError(f"{text}: not a sample set; expected a {_ARCHIVES}")


def count_samples(source: str | os.PathLike) -> int | None:
    """How many images the sample set ``source`` holds, from its index or array header alone (None for
    tar shards, which say only when read)."""
    text = os.fspath(source)
    suffix = Path(text).suffix.lower()
    if suffix in (".npy", ".npz"):
        p = Path(text)
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        return (_npy_layout(p) if suffix == ".npy" else _npz_layout(p)).shape[0]
    samples = open_samples(text)
    return None if isinstance(samples, TarShards) else len(samples)


def _decode(data: bytes, name: str, transform: Transform | None, mode: str) -> SampleItem:
    try:
        img = load_image(name, mode, data=data)
    except ImageError as e:
        return None, name, e.reason
    if transform is None:
        raise RuntimeError("set the sample set's transform before reading it")
    return transform(img), name, None


class _PerProcess:
    """An open handle (zip file, memory map) per process: a forked decode worker must not share the
    parent's file position, and handles do not pickle."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._handle: Any = None

    def get(self, opener: Callable[[], Any]) -> Any:
        if self._pid != os.getpid():
            self._handle, self._pid = opener(), os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        return {"_pid": None, "_handle": None}


class ZipImages(Dataset):
    """The images of a ZIP archive, in member-name order, read from the archive (never extracted).

    ``labels`` are ``dataset.json``'s (StyleGAN/EDM's ``dataset_tool``: ``{"labels": [[name, label],
    ...]}``), one per member, None where the file has none.
    """

    def __init__(self, path: str | os.PathLike, transform: Transform | None = None, mode: str = "RGB") -> None:
        self.path, self.transform, self.mode = Path(path), transform, mode
        try:
            with zipfile.ZipFile(self.path) as z:
                infos = [i for i in z.infolist() if not i.is_dir() and _is_image_member(i.filename)]
                labels = _dataset_json_labels(z, self.path)
        except FileNotFoundError:
            raise InputError(f"{self.path}: no such file") from None
        except (OSError, zipfile.BadZipFile) as e:
            raise InputError(f"{self.path}: not a readable ZIP archive ({e})") from None
        self.members = sorted(i.filename for i in infos)
        self.sizes = {i.filename: i.file_size for i in infos}
        self.labels = [labels.get(m) for m in self.members] if labels else None
        if not self.members:
            raise InputError(f"{self.path}: no images in the archive (image extensions: "
                             f"{', '.join(IMAGE_EXTENSIONS)}; hidden members skipped)")
        self._zip = _PerProcess()

    def describe(self) -> str:
        with_labels = f", {sum(x is not None for x in self.labels)} labelled (dataset.json)" if self.labels else ""
        return f"{self.path}: ZIP archive of {len(self)} images{with_labels}, read in place"

    def select(self, indices: range) -> ZipImages:
        """The members at ``indices`` (a rank's block), as a set of their own."""
        out = object.__new__(ZipImages)
        out.__dict__.update(self.__dict__, members=[self.members[i] for i in indices], _zip=_PerProcess(),
                            labels=None if self.labels is None else [self.labels[i] for i in indices])
        return out

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> SampleItem:
        member = self.members[i]
        name = f"{self.path}:{member}"
        if self.sizes[member] > MAX_MEMBER_BYTES:
            return None, name, (f"member is {self.sizes[member]:,} bytes uncompressed, more than the "
                                f"{MAX_MEMBER_BYTES:,} an image is allowed")
        try:
            data = self._zip.get(lambda: zipfile.ZipFile(self.path)).read(member)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as e:
            # A bad CRC, a truncated or encrypted member, an unsupported compression method.
            return None, name, f"unreadable archive member ({e})"
        return _decode(data, name, self.transform, self.mode)


def _is_image_member(name: str) -> bool:
    parts = name.split("/")
    if any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _dataset_json_labels(z: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    """``dataset.json``'s labels by member name ({} when the archive has none or they are null)."""
    if "dataset.json" not in z.namelist():
        return {}
    try:
        labels = json.loads(z.read("dataset.json")).get("labels")
        return {str(name): label for name, label in labels or []}
    except (ValueError, TypeError, AttributeError) as e:
        log.warning("%s: ignoring an unreadable dataset.json (%s)", path, e)
        return {}


@dataclass(frozen=True)
class _ArrayLayout:
    member: str | None        # the .npz member (None for .npy)
    shape: tuple[int, ...]
    channels_first: bool      # N x C x H x W
    offset: int | None        # where the raw data starts in the file (None: compressed, read whole)
    fortran: bool


class ArrayImages(Dataset):
    """uint8 images in an ``.npy`` file or an ``.npz`` member (``arr_0``, else the only image array)."""

    def __init__(self, path: str | os.PathLike, transform: Transform | None = None, mode: str = "RGB") -> None:
        self.path, self.transform, self.mode = Path(path), transform, mode
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        self.layout = _npy_layout(self.path) if self.path.suffix.lower() == ".npy" else _npz_layout(self.path)
        self.indices: Sequence[int] = range(self.layout.shape[0])
        # A compressed member cannot be mapped: read it once here, so forked workers share the pages.
        self._loaded = None if self.layout.offset is not None else self._read_whole()
        self._map = _PerProcess()

    def describe(self) -> str:
        s = self.layout.shape
        n, (h, w, c) = s[0], ((s[2], s[3], s[1]) if self.layout.channels_first else
                              (s[1], s[2], s[3] if len(s) == 4 else 1))
        order = ("N x C x H x W (channels first)" if self.layout.channels_first
                 else "N x H x W x C (as ADM stores samples)" if len(s) == 4 else "N x H x W (grey)")
        where = f" under {self.layout.member}" if self.layout.member else ""
        how = "memory-mapped" if self._loaded is None else "compressed, read into memory"
        return f"{self.path}: {n} images of {h} x {w} x {c}{where}, {order}, {how}"

    def select(self, indices: range) -> ArrayImages:
        """The images at ``indices`` (a rank's block), as a set of their own."""
        out = object.__new__(ArrayImages)
        out.__dict__.update(self.__dict__, indices=[self.indices[i] for i in indices], _map=_PerProcess())
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def _read_whole(self) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as f:
            return f[self.layout.member]

    def _array(self) -> np.ndarray:
        if self._loaded is not None:
            return self._loaded
        lay = self.layout
        return self._map.get(lambda: np.memmap(self.path, np.uint8, "r", lay.offset, lay.shape,
                                               "F" if lay.fortran else "C"))

    def __getitem__(self, i: int) -> SampleItem:
        k = self.indices[i]
        name = f"{self.path}[{k}]"
        img = np.asarray(self._array()[k])
        if self.layout.channels_first:
            img = img.transpose(1, 2, 0)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        img = np.ascontiguousarray(img)
        # Through PIL and the same transform as a decoded file: an array and the PNGs of the same images
        # give the same tensors.
        pil = Image.fromarray(img, "L" if img.ndim == 2 else "RGB")
        if pil.mode != self.mode:
            pil = pil.convert(self.mode)
        if self.transform is None:
            raise RuntimeError("set the sample set's transform before reading it")
        return self.transform(pil), name, None


def _check_image_array(path: Path, member: str | None, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Whether (dtype, shape) are uint8 images; returns channels_first. Raises InputError naming the fix."""
    what = f"{path}" + (f" member {member}" if member else "")
    if len(shape) == 4 and shape[3] in (1, 3):
        channels_first = False
        if shape[1] in (1, 3):
            log.info("%s: %s could be N x C x H x W or N x H x W x C; read as N x H x W x C", what, shape)
    elif len(shape) == 4 and shape[1] in (1, 3):
        channels_first = True
    elif len(shape) == 3:
        channels_first = False
    else:
        raise InputError(f"{what}: shape {shape} is not a batch of images; expected N x H x W x 3 (as ADM "
                         f"stores samples), N x 3 x H x W, or N x H x W for grey")
    if dtype != np.uint8:
        raise InputError(f"{what}: {dtype} images; image arrays must be uint8 0..255: convert with "
                         f"np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for images in [0, 1]")
    if shape[0] == 0:
        raise InputError(f"{what}: holds no images (shape {shape})")
    return channels_first


def _read_npy_header(f: Any, where: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read[version](f)
    except ValueError as e:
        raise InputError(f"{where}: not a readable .npy array ({e})") from None
    return dtype, tuple(shape), fortran


def _npy_layout(path: Path) -> _ArrayLayout:
    with open(path, "rb") as f:
        dtype, shape, fortran = _read_npy_header(f, str(path))
        offset = f.tell()
    channels_first = _check_image_array(path, None, dtype, shape)
    return _ArrayLayout(None, shape, channels_first, offset, fortran)


def _npz_layout(path: Path) -> _ArrayLayout:
    try:
        with zipfile.ZipFile(path) as z:
            names = {Path(n).stem: n for n in z.namelist() if n.endswith(".npy")}
            headers = {}
            for key, name in names.items():
                with z.open(name) as f:
                    headers[key] = (*_read_npy_header(f, f"{path} member {key}"), f.tell())
            member = "arr_0" if "arr_0" in names else next(
                (k for k, (dtype, shape, _, _) in headers.items() if dtype == np.uint8 and len(shape) >= 3),
                None)
            if member is None:
                raise InputError(f"{path}: no image array among the members {sorted(names)}; expected uint8 "
                                 f"images under arr_0 (np.savez(path, images)), or mu and sigma for statistics")
            dtype, shape, fortran, header_len = headers[member]
            info = z.getinfo(names[member])
            offset = _stored_data_offset(path, info) if info.compress_type == zipfile.ZIP_STORED else None
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from None
    channels_first = _check_image_array(path, member, dtype, shape)
    return _ArrayLayout(member, shape, channels_first, None if offset is None else offset + header_len, fortran)


def _stored_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where an uncompressed member's bytes start: after its local header (30 bytes, then the name and an
    extra field whose lengths the local header gives, which may differ from the central directory's)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


class TarShards(IterableDataset):
    """WebDataset tar shards, through the ``webdataset`` library; each sample's first image member.

    Decode workers take whole shards (``webdataset.split_by_worker``). A shard that cannot be read is
    reported as one failure and the others go on.
    """

    def __init__(self, pattern: str | os.PathLike, transform: Transform | None = None,
                 mode: str = "RGB") -> None:
        try:
            import webdataset
        except ImportError:
            raise InputError(f"{pattern}: reading tar shards needs the webdataset package: "
                             f"pip install 'inceptionv3[archives]'") from None
        self.pattern, self.transform, self.mode = os.fspath(pattern), transform, mode
        urls = webdataset.shardlists.expand_urls(self.pattern)
        if len(urls) == 1 and any(c in urls[0] for c in "*?[") and not Path(urls[0]).exists():
            urls = sorted(glob.glob(urls[0]))
            if not urls:
                raise InputError(f"{self.pattern}: pattern matched no files")
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{missing[0]}: no such shard{more} (from {self.pattern})")
        self.urls = urls

    def describe(self) -> str:
        return f"{self.pattern}: {len(self.urls)} tar shard(s), read with webdataset"

    def select(self, indices: range) -> TarShards:
        """The shards at ``indices`` (a rank's block of the shards)."""
        out = object.__new__(TarShards)
        out.__dict__.update(self.__dict__, urls=[self.urls[i] for i in indices])
        return out

    def __iter__(self) -> Iterator[SampleItem]:
        import webdataset
        for shard in webdataset.split_by_worker(iter(self.urls)):
            try:
                for sample in webdataset.tarfile_samples(iter([{"url": shard}]),
                                                         handler=webdataset.reraise_exception):
                    yield self._item(shard, sample)
            except Exception as e:   # noqa: BLE001 - tarfile reports damage through many types
                log.debug("reading %s failed: %r", shard, e)
                yield None, shard, f"unreadable tar shard ({type(e).__name__}: {e.args[0] if e.args else e})"

    def _item(self, shard: str, sample: dict) -> SampleItem:
        key = sample.get("__key__", "?")
        exts = [k for k in sample if not k.startswith("__")]
        image = next((k for k in exts if "." + k.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS), None)
        if image is None:
            return None, f"{shard}:{key}", f"no image member (has {', '.join(exts) or 'nothing'})"
        return _decode(sample[image], f"{shard}:{key}.{image}", self.transform, self.mode)


def sample_batches(samples: ZipImages | ArrayImages | TarShards, batch_size: int,
                   workers: int) -> Iterator[SampleBatch]:
    """Decoded batches of ``samples`` in order; ``workers`` processes decode while the caller computes
    (0: in this process, batch by batch). Tar shards are split between the workers whole."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_samples, pin_memory=torch.cuda.is_available(),
                        prefetch_factor=2 if workers > 0 else None)
    if workers > 0:   # each worker runs torch on one thread
        yield from loader
        return
    # In this process too the transforms run on one torch thread: torch's resize rounds differently when
    # it splits an image between threads (by up to 2.4e-7), and the features should not depend on that.
    # Images of an indexable set are decoded side by side on a thread per core (PIL releases the GIL).
    if not isinstance(samples, IterableDataset) and available_cores() > 1:
        yield from in_process_batches(samples, batch_size, available_cores(), collate_samples)
        return
    batches = iter(loader)
    while True:
        with torch_threads(1):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch
