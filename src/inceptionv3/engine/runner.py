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

from ..data.loaders import Batch, default_workers, image_batches
from ..data.transforms import eval_transform
from ..runtime.threads import resolve_device, set_compute_threads


@dataclass
class Step:
    """One batch's results: outputs for ``indices`` (positions in the input list), and failures."""
    indices: list[int]
    outputs: torch.Tensor
    failures: list[tuple[int, str]]


def image_mode(model: nn.Module) -> str:
    return "L" if getattr(model, "in_chans", 3) == 1 else "RGB"


def decoded_batches(
    paths: Sequence[Path],
    transform: Callable,
    mode: str = "RGB",
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "images",
) -> Iterator[Batch]:
    """Decoded batches in input order with a progress bar, after budgeting threads against workers.

    The one place that sets up decoding for every command that reads folders (predict, features, metrics).
    """
    workers = default_workers() if workers is None else workers
    set_compute_threads(workers)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for batch in image_batches(paths, transform, mode=mode, batch_size=batch_size, workers=workers):
            yield batch
            bar.update(len(batch.indices) + len(batch.failures))
    finally:
        bar.close()


def run(
    model: nn.Module,
    paths: Sequence[Path],
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | str,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    desc: str = "images",
    *,
    precision: str = "fp32",
    backend: str = "torch",
    calibration: torch.Tensor | None = None,
) -> Iterator[Step]:
    """Compute an output for every decodable image, in input order; outputs come back on the CPU.

    ``fn`` is an output name ("logits", "pool" or a tap from ``model.TAPS``: any backend), or a function
    ``fn(fused_model, images)`` (torch backend only). The model runs as ``accel.build_engine`` builds it:
    batch norm folded, sibling convs fused, at ``precision`` on ``backend`` (both accept "auto").
    """
    from .engine import build_engine

    dev = resolve_device(device)
    meta = getattr(model, "meta", None)
    if meta is None:
        raise ValueError("the model carries no preprocessing (model.meta): load it with "
                         "inceptionv3.load_model, or set model.meta from inceptionv3.load_weights")
    transform = eval_transform(meta.preprocess, in_chans=getattr(model, "in_chans", 3))
    output = fn if isinstance(fn, str) else "logits"
    if not isinstance(fn, str) and backend not in ("torch", "auto"):
        raise ValueError(f"backend {backend} computes named outputs only (logits, pool); use --backend torch")
    engine = build_engine(model, output=output, precision=precision, backend=backend if isinstance(fn, str)
                          else "torch", device=dev, calibration=calibration, batch_size=batch_size,
                          images=len(paths))
    for batch in decoded_batches(paths, transform, image_mode(model), batch_size, workers, progress, desc):
        out = torch.empty(0)
        if batch.indices:
            out = engine(batch.images) if isinstance(fn, str) else engine.apply(fn, batch.images)
        yield Step(list(batch.indices), out, list(batch.failures))


def calibration_images(model: nn.Module, inputs: Sequence[str | Path], limit: int = 256,
                       workers: int | None = None) -> torch.Tensor:
    """Up to ``limit`` images from files/folders, preprocessed as ``model.meta`` says, for int8 calibration.

    Fewer than ``accel.MIN_CALIBRATION_IMAGES`` usable images is an error naming the minimum.
    """
    from ..data.paths import expand_paths
    from .options import MIN_CALIBRATION_IMAGES

    meta = getattr(model, "meta", None)
    if meta is None:
        raise ValueError("the model carries no preprocessing (model.meta): load it with inceptionv3.load_model")
    try:
        paths = expand_paths(inputs)[:limit]
    except (ValueError, OSError) as e:
        raise ValueError(f"--calibration: {e}") from None
    transform = eval_transform(meta.preprocess, in_chans=getattr(model, "in_chans", 3))
    images = [b.images for b in decoded_batches(paths, transform, image_mode(model), 32, workers, desc="calibration")
              if b.indices]
    found = sum(len(x) for x in images)
    if found < MIN_CALIBRATION_IMAGES:
        where = ", ".join(map(str, inputs))
        raise ValueError(f"--calibration {where}: {found} usable images, int8 calibration needs at least "
                         f"{MIN_CALIBRATION_IMAGES} images like the ones to classify")
    return torch.cat(images)
