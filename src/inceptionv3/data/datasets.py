"""Labeled datasets for training and evaluation: class folders, CSV/JSONL lists of path,label, the
embedded digits, and the seeded per-class split (``load_labeled`` picks among them from one spec).

A bad image never stops a run: a labeled dataset returns None (or a ``BadImage``) for an image it cannot
decode and logs one warning naming the file and the reason (in the worker process that met it);
``loaders.collate_labeled`` drops it and counts it.
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .decode import ImageError, load_image
from .paths import IMAGE_EXTENSIONS, list_images

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]   # a PIL image -> its input tensor (data.transforms)


@dataclass(frozen=True)
class BadImage:
    """An image a labeled dataset could not decode (returned instead of None when `report_bad` is set)."""

    path: str
    reason: str


class SkippedImages(int):
    """The number of images a batch lost (an int), with the `BadImage`s among them (for the run's list)."""

    def __new__(cls, count: int, images: Sequence[BadImage] = ()) -> SkippedImages:  # noqa: PYI034
        obj = super().__new__(cls, count)
        obj.images = tuple(images)
        return obj


class LabeledImages(Dataset):
    """(image tensor, label) pairs from files; an image that fails to decode gives None.

    The failure is logged once per file and process (with its reason); `collate_labeled` drops it and
    counts it, so one bad file costs one sample, not the run. With `report_bad = True` the item is a
    `BadImage` (path and reason) instead, which `collate_labeled` passes on in its count, so that
    training can list the bad files in its run folder whichever worker process met them.
    """

    report_bad = False

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Transform,
        mode: str = "RGB",
    ) -> None:
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.classes = list(classes)
        self.transform = transform
        self.mode = mode
        self._reported: set[str] = set()

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[i]
        try:
            return self.transform(load_image(path, self.mode)), label
        except ImageError as e:   # from decoding, or a transform bounding its work
            reason = e.reason
        except MemoryError:
            reason = "not enough memory to preprocess it"
        if path not in self._reported:
            self._reported.add(path)
            log.warning("skipping %s", ImageError(path, reason))
        return BadImage(path, reason) if self.report_bad else None


class InMemoryImages(Dataset):
    """(image tensor, label) pairs from PIL images held in memory (the digits set)."""

    def __init__(
        self,
        images: Sequence[Image.Image],
        labels: Sequence[int],
        classes: Sequence[str],
        transform: Transform,
        name: str = "memory",
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = list(images)
        self.classes = list(classes)
        self.transform = transform
        # Same shape as LabeledImages.samples so callers can count classes the same way.
        self.samples = [(f"{name}[{i}]", int(y)) for i, y in enumerate(labels)]

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.samples[i][1]


def _class_dirs(root: Path) -> list[str]:
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected one sub-folder per class)")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        what = "is empty" if not any(root.iterdir()) else "has no class sub-folders"
        hint = f"expected one sub-folder of images per class, e.g. {root}/cat/1.jpg"
        raise ValueError(f"{root}: {what} ({hint})")
    return names


def image_folder(root: str | os.PathLike, transform: Transform, mode: str = "RGB") -> LabeledImages:
    """One sub-folder per class (sorted names -> label indices), images found recursively inside."""
    root = Path(root)
    classes = _class_dirs(root)
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = list_images(root / name, IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(
                f"{root / name}: class folder has no images (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        samples.extend((str(f), label) for f in files)
    return LabeledImages(samples, classes, transform, mode)


LIST_SUFFIXES = (".csv", ".jsonl")


def read_image_list(list_file: str | os.PathLike) -> tuple[list[tuple[str, str]], Path]:
    """(path, label) rows of a CSV (`path,label`, header optional) or JSONL (`{"path": .., "label": ..}`)
    file; relative paths are taken from the list file's folder."""
    list_file = Path(list_file)
    base = list_file.parent
    rows: list[tuple[str, str]] = []
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{list_file}: cannot read the image list ({e})") from None
    if list_file.suffix.lower() == ".csv":
        for n, row in enumerate(csv.reader(text.splitlines()), 1):
            if not row or not "".join(row).strip():
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue   # header
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{list_file}, line {n}: expected 'path,label', got {','.join(row)!r}")
            rows.append((row[0].strip(), row[1].strip()))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                rows.append((str(item["path"]), str(item["label"])))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{list_file}, line {n}: expected a JSON object with \"path\" and "
                                 f"\"label\", got {line[:80]!r}") from None
    if not rows:
        raise ValueError(f"{list_file}: the image list is empty (expected 'path,label' rows)")
    return [(str(p if Path(p).is_absolute() else base / p), y) for p, y in rows], base


def _sorted_labels(labels: Sequence[str]) -> list[str]:
    # Integer labels sort as numbers (so label "10" comes after "9"), anything else as text, as folders do.
    unique = set(labels)
    if all(y.lstrip("-").isdigit() for y in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def image_list(list_file: str | os.PathLike, transform: Transform, mode: str = "RGB",
               classes: Sequence[str] | None = None) -> LabeledImages:
    """Labeled images from a CSV/JSONL list (see `read_image_list`); classes are the sorted labels, or
    `classes` (a validation list must use the training list's labels)."""
    rows, _ = read_image_list(list_file)
    names = list(classes) if classes is not None else _sorted_labels([y for _, y in rows])
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({y for _, y in rows if y not in index})
    if unknown:
        raise ValueError(f"{list_file}: labels {unknown[:5]} are not among the training labels "
                         f"{names[:10]}; use the same label names in both lists")
    missing = [p for p, _ in rows if not os.path.exists(p)]
    if len(missing) == len(rows):
        raise ValueError(f"{list_file}: none of the {len(rows)} listed files exists (e.g. {missing[0]}); "
                         "relative paths are read from the list file's folder")
    if missing:
        log.warning("%s: %d of %d listed files do not exist (e.g. %s); they will be skipped",
                    list_file, len(missing), len(rows), missing[0])
    return LabeledImages([(p, index[y]) for p, y in rows], names, transform, mode)


def _list_pair(root: Path) -> tuple[Path, Path] | None:
    for suffix in LIST_SUFFIXES:
        if (root / f"train{suffix}").is_file() and (root / f"val{suffix}").is_file():
            return root / f"train{suffix}", root / f"val{suffix}"
    return None


# The digits set ships with scikit-learn (offline): 1,797 8x8 images of 0..9, values 0..16.
# A fixed stratified split: 1,347 train / 450 val.
DIGITS_VAL_FRACTION = 0.25
DIGITS_SEED = 0
DIGITS_CLASSES = [str(d) for d in range(10)]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)  # N x 8 x 8, 0..16 -> 0..255
    y = bunch.target.astype(np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(y)), test_size=DIGITS_VAL_FRACTION, random_state=DIGITS_SEED, stratify=y
    )
    # Sorted: keeps the original order inside each split, whatever order sklearn returns.
    idx_train, idx_val = np.sort(idx_train), np.sort(idx_val)
    return {"train": (pixels[idx_train], y[idx_train]), "val": (pixels[idx_val], y[idx_val])}


def digits_split(split: str) -> tuple[list[Image.Image], list[int]]:
    """The embedded digits as 8x8 'L' images and labels; split is "train" (1,347) or "val" (450)."""
    _check_split(split)
    pixels, labels = _digits_arrays()[split]
    return [Image.fromarray(p, "L") for p in pixels], labels.tolist()


def digits(split: str, transform: Transform, mode: str = "L") -> InMemoryImages:
    """Digits as a dataset with classes "0".."9"; `mode` converts the 8x8 grey images (e.g. to RGB)."""
    images, labels = digits_split(split)
    if mode != "L":
        images = [im.convert(mode) for im in images]
    return InMemoryImages(images, labels, DIGITS_CLASSES, transform, name=f"digits-{split}")


def load_labeled(
    spec: str | os.PathLike,
    split: str,
    transform: Transform,
    mode: str = "RGB",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> LabeledImages | InMemoryImages:
    """A labeled split from "digits", a folder, or a CSV/JSONL list of path,label.

    A list file is split like a single folder; a folder holding train.csv and val.csv (or .jsonl) uses them.

    A folder with train/ and val/ sub-folders uses them (class names must match). A folder with only
    train/ is split like a single folder. Otherwise the folder is one image folder, split per class with
    a seeded shuffle: round(n * val_fraction) images of each class (at least 1 when the class has 2+)
    go to "val", the same ones for the same seed every time.
    """
    _check_split(split)
    if str(spec) == "digits":
        return digits(split, transform, mode)
    root = Path(spec)
    if root.is_file() and root.suffix.lower() in LIST_SUFFIXES:
        full = image_list(root, transform, mode)
        train_idx, val_idx = stratified_split(full.targets, val_fraction, seed)
        keep = train_idx if split == "train" else val_idx
        return LabeledImages([full.samples[i] for i in keep], full.classes, transform, mode)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder or list (expected 'digits', a folder of class sub-folders, "
                         "or a .csv/.jsonl list of path,label)")
    pair = _list_pair(root)
    if pair is not None and not (root / "train").is_dir():
        train_list = image_list(pair[0], transform, mode)
        if split == "train":
            return train_list
        return image_list(pair[1], transform, mode, classes=train_list.classes)
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train_classes, val_classes = _class_dirs(train_dir), _class_dirs(val_dir)
        if train_classes != val_classes:
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise ValueError(
                f"{root}: train/ and val/ have different class folders "
                f"(only in train: {only_train or '-'}; only in val: {only_val or '-'})"
            )
        return image_folder(root / split, transform, mode)
    if train_dir.is_dir():
        log.info("%s has train/ but no val/: splitting train/ with val_fraction=%s", root, val_fraction)
        root = train_dir
    full = image_folder(root, transform, mode)
    train_idx, val_idx = stratified_split(full.targets, val_fraction, seed)
    keep = train_idx if split == "train" else val_idx
    return LabeledImages([full.samples[i] for i in keep], full.classes, transform, mode)


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Seeded per-class split of indices -> (train, val), both sorted.

    Written out (rather than sklearn's train_test_split) so tiny classes never raise: a class with 2+
    items always keeps at least one item on each side; a class with one item stays in train.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = round(len(idx) * val_fraction)
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


def _check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
