"""Loaders: image files decoded in batches for inference (``image_batches``: in input order, each batch
listing its failures as (index, reason)), and the DataLoader of labeled data for training and evaluation
(``labeled_loader``: seeded shuffling and workers, failed images dropped and counted)."""
from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..runtime.threads import available_cores, bound_workers, torch_threads
from .datasets import BadImage, SkippedImages, Transform
from .decode import ImageError, load_image

B = TypeVar("B")


def default_workers() -> int:
    """Decoding worker processes for a loader: 0 on <= 2 cores, else min(4, cores // 2).

    Workers and torch's compute threads share the cores. On 2 cores torch already runs 2 threads, so
    any worker process oversubscribes and slows the model more than decoding in-process costs. Above
    that, half the cores decode and the rest compute; 4 workers decode JPEGs faster than a CPU runs
    Inception V3, and more mostly cost memory (pass `workers` explicitly on a large GPU box).
    """
    cores = available_cores()
    return 0 if cores <= 2 else min(4, cores // 2)


def resolve_workers(workers: int | None) -> int:
    """The decode worker processes to start: ``default_workers()`` for None, else ``workers`` bounded by
    the cores (``runtime.threads.bound_workers``, which says so); a negative or non-integer count is a
    ValueError."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 or None, got {workers!r}")
    return bound_workers(workers)


class ImageFiles(Dataset):
    """Files for predict/features; item i -> (image tensor or None, i, error reason or None)."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Transform, mode: str = "RGB") -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return self.transform(load_image(self.paths[i], self.mode)), i, None
        except ImageError as e:   # from decoding, or a transform bounding its work
            return None, i, e.reason
        except MemoryError:
            return None, i, "not enough memory to preprocess it"


@dataclass
class Batch:
    """Decoded images of one batch plus the inputs that failed.

    `images[k]` belongs to input `indices[k]`. A batch may hold only failures; then `images` is an
    empty tensor and `indices` is empty.
    """

    images: torch.Tensor
    indices: list[int]
    failures: list[tuple[int, str]] = field(default_factory=list)  # (input index, reason)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch(self.images.pin_memory(), self.indices, self.failures)


def collate_images(items: Sequence[tuple[torch.Tensor | None, int, str | None]]) -> Batch:
    """Stack the decoded images and list the failures (collate_fn for `ImageFiles`)."""
    good = [(x, i) for x, i, _ in items if x is not None]
    failures = [(i, reason) for x, i, reason in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else torch.empty(0)
    return Batch(images, [i for _, i in good], failures)


def in_process_batches(dataset: Dataset, batch_size: int, threads: int,
                       collate: Callable[[list[Any]], B]) -> Iterator[B]:
    """``collate`` of each run of ``batch_size`` items of ``dataset``, in order: workers=0, where each batch
    is decoded here, between model calls, by ``threads`` threads.

    The model and the decoding then take turns on every core instead of fighting over them. PIL releases
    the GIL while it decodes and resizes, so threads share the work. Torch's per-image ops (to float,
    normalise, resize) run single-threaded: split across cores, a 3 x 299 x 299 tensor op costs more in
    fork/join than it saves, on a busy machine a multi-threaded one waits for a core at each barrier, and
    torch's resize rounds differently when it splits an image between threads.
    """
    pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None
    get = pool.map if pool else map
    try:
        for start in range(0, len(dataset), batch_size):
            with torch_threads(1):
                batch = collate(list(get(dataset.__getitem__, range(start, min(start + batch_size, len(dataset))))))
            yield batch
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def image_batches(
    paths: Sequence[str | os.PathLike],
    transform: Transform,
    mode: str = "RGB",
    batch_size: int = 32,
    workers: int | None = None,
    *,
    pin_memory: bool | None = None,
    decode_threads: int | None = None,
) -> Iterator[Batch]:
    """Decoded batches in input order; worker processes decode while the caller computes.

    `workers=None` uses `default_workers()`; 0 decodes in this process, batch by batch, on
    `decode_threads` threads (default: one per core). `pin_memory` defaults to whether CUDA is available
    (pinned host memory makes .to('cuda', non_blocking=True) overlap).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    workers = resolve_workers(workers)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if workers == 0:
        threads = available_cores() if decode_threads is None else decode_threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"decode_threads must be an integer >= 1 or None, got {decode_threads!r}")
        for batch in in_process_batches(ImageFiles(paths, transform, mode), batch_size, threads, collate_images):
            yield batch.pin_memory() if pin_memory and batch.indices else batch
        return
    loader = DataLoader(
        ImageFiles(paths, transform, mode),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_images,
        pin_memory=pin_memory,
        prefetch_factor=2,  # each worker keeps 2 batches ready ahead of compute
    )
    yield from loader


def collate_labeled(
    batch: Sequence[tuple[torch.Tensor, int] | BadImage | None],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images, labels, number skipped): drops the None (or `BadImage`) items of images that failed to
    decode; the number is a `SkippedImages`, carrying the `BadImage`s.

    When every item failed, images and labels are empty (size 0) tensors; the caller skips the step.
    """
    good = [item for item in batch if isinstance(item, tuple)]
    skipped = SkippedImages(len(batch) - len(good), [item for item in batch if isinstance(item, BadImage)])
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([x for x, _ in good])
    labels = torch.tensor([y for _, y in good], dtype=torch.long)
    return images, labels, skipped


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker as base_seed + worker_id (base_seed from the loader's generator);
    # derive numpy's and random's seeds from it so any augmentation using them is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def labeled_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int | None,
    seed: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """DataLoader yielding (images, labels, skipped); shuffling and worker seeds follow `seed`.

    With workers=0 the random augmentations draw from torch's global generator in this process: seed
    it (torch.manual_seed) for a reproducible run. Workers persist across epochs to avoid re-forking.
    A `sampler` (e.g. training's sharded, resumable one) replaces `shuffle`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    workers = resolve_workers(workers)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_labeled,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )
