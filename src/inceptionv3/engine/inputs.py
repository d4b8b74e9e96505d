"""Images into the engine: decoded batches of files with the thread budget set, and int8 calibration sets.

Every command that reads image files decodes them here (predict, features, the metrics, calibration), so
decode workers and torch's compute threads are budgeted against the cores in one place.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.loaders import Batch, default_workers, image_batches
from ..data.paths import expand_paths
from ..data.transforms import eval_transform
from ..runtime.threads import set_compute_threads
from .options import CALIBRATION_LIMIT, MIN_CALIBRATION_IMAGES, EngineOptions, PathLike


def thread_budget(options: EngineOptions) -> int:
    """The decode workers ``options`` asks for (None: chosen for the core count), with torch's compute
    threads set to the cores they leave free (or ``options.threads``). Returns the workers."""
    workers = default_workers() if options.workers is None else options.workers
    set_compute_threads(workers, options.threads)
    return workers


def image_mode(model: nn.Module) -> str:
    """The PIL mode the model's input channels take: "L" for one channel, else "RGB"."""
    return "L" if getattr(model, "in_chans", 3) == 1 else "RGB"


def model_transform(model: nn.Module) -> Callable:
    """The eval transform of ``model.meta.preprocess``: resize, center crop, normalise."""
    meta = getattr(model, "meta", None)
    if meta is None:
        raise ValueError("the model carries no preprocessing (model.meta): load it with "
                         "inceptionv3.load_model, or set model.meta from inceptionv3.load_weights")
    return eval_transform(meta.preprocess, in_chans=getattr(model, "in_chans", 3))


def decoded_batches(paths: Sequence[Path], transform: Callable, options: EngineOptions, mode: str = "RGB",
                    desc: str = "images") -> Iterator[Batch]:
    """Decoded batches of ``options.batch_size`` in input order, with a progress bar if ``options.progress``."""
    workers = thread_budget(options)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not options.progress, leave=False)
    try:
        for batch in image_batches(paths, transform, mode=mode, batch_size=options.batch_size, workers=workers):
            yield batch
            bar.update(len(batch.indices) + len(batch.failures))
    finally:
        bar.close()


def calibration_images(model: nn.Module, inputs: Sequence[PathLike], limit: int = CALIBRATION_LIMIT,
                       workers: int | None = None) -> torch.Tensor:
    """Up to ``limit`` images from files/folders, preprocessed as ``model.meta`` says, for int8 calibration.

    Fewer than ``MIN_CALIBRATION_IMAGES`` usable images is an error naming the minimum.
    """
    transform = model_transform(model)
    try:
        paths = expand_paths(inputs)[:limit]
    except (ValueError, OSError) as e:
        raise ValueError(f"--calibration: {e}") from None
    options = EngineOptions(batch_size=32, workers=workers)
    images = [b.images for b in decoded_batches(paths, transform, options, image_mode(model), "calibration")
              if b.indices]
    found = sum(len(x) for x in images)
    if found < MIN_CALIBRATION_IMAGES:
        where = ", ".join(map(str, inputs))
        raise ValueError(f"--calibration {where}: {found} usable images, int8 calibration needs at least "
                         f"{MIN_CALIBRATION_IMAGES} images like the ones to classify")
    return torch.cat(images)


def calibration_tensor(model: nn.Module, options: EngineOptions) -> torch.Tensor | None:
    """``options.calibration`` as preprocessed images: a tensor as given, files and folders decoded."""
    calibration = options.calibration
    if calibration is None or isinstance(calibration, torch.Tensor):
        return calibration
    return calibration_images(model, list(calibration), workers=options.workers)
