"""The batched inference loop shared by predict, features and evaluation of folders of images.

Images are decoded and resized in worker processes (``data.image_batches``) while the model computes;
failures travel with each batch so they can be reported in input order without stopping the run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import default_workers, image_batches
from .runtime import resolve_device, set_compute_threads
from .transforms import eval_transform


@dataclass
class Step:
    """One batch's results: outputs for ``indices`` (positions in the input list), and failures."""
    indices: list[int]
    outputs: torch.Tensor
    failures: list[tuple[int, str]]


def image_mode(model: nn.Module) -> str:
    return "L" if getattr(model, "in_chans", 3) == 1 else "RGB"


def run(
    model: nn.Module,
    paths: Sequence[Path],
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    desc: str = "images",
) -> Iterator[Step]:
    """Apply ``fn(model, images)`` to every decodable image, in input order; outputs come back on the CPU."""
    workers = default_workers() if workers is None else workers
    set_compute_threads(workers)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    transform = eval_transform(model.meta.preprocess, in_chans=getattr(model, "in_chans", 3))
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            for batch in image_batches(paths, transform, mode=image_mode(model),
                                       batch_size=batch_size, workers=workers):
                if len(batch.indices):
                    out = fn(model, batch.images.to(dev, non_blocking=True)).float().cpu()
                else:
                    out = torch.empty(0)
                bar.update(len(batch.indices) + len(batch.failures))
                yield Step(list(batch.indices), out, list(batch.failures))
    finally:
        bar.close()
