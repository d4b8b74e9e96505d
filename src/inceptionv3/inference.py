"""The batched inference loop shared by predict, features and evaluation of folders of images.

Images are decoded and resized in worker processes (``data.image_batches``) while the model computes;
failures travel with each batch so they can be reported in input order without stopping the run.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import Batch, default_workers, image_batches
from .runtime import resolve_device, set_compute_threads
from .transforms import eval_transform


@dataclass
class Step:
    """One batch's results: outputs for ``indices`` (positions in the input list), and failures."""
    indices: list[int]
    outputs: torch.Tensor
    failures: list[tuple[int, str]]


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold each Conv+BN pair into one biased conv, in place (eval-mode arithmetic; about 1e-6 relative)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    from .model import BasicConv2d

    for m in model.modules():
        if isinstance(m, BasicConv2d) and isinstance(m.bn, nn.BatchNorm2d):
            bn, conv = m.bn, m.conv
            fused = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size,
                                       conv.stride, conv.padding, bias=True, device=conv.weight.device)
            fused.weight, fused.bias = fuse_conv_bn_weights(
                conv.weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
            m.conv, m.bn = fused.requires_grad_(False), nn.Identity()
    return model


def inference_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode copy for fast inference: batch norm folded into the convs, channels-last memory.

    On CPU, channels-last alone runs InceptionV3 about 1.4x faster than the default layout, and folding
    removes one pass over every activation. The caller's model is left untouched.
    """
    fast = fold_batch_norm(copy.deepcopy(model).eval())
    return fast.to(device, memory_format=torch.channels_last)


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
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    desc: str = "images",
) -> Iterator[Step]:
    """Apply ``fn(model, images)`` to every decodable image, in input order; outputs come back on the CPU."""
    dev = resolve_device(device)
    meta = getattr(model, "meta", None)
    if meta is None:
        raise ValueError("the model carries no preprocessing (model.meta): load it with "
                         "inceptionv3.load_model, or set model.meta from inceptionv3.load_weights")
    transform = eval_transform(meta.preprocess, in_chans=getattr(model, "in_chans", 3))
    fast = inference_copy(model, dev)
    with torch.inference_mode():
        for batch in decoded_batches(paths, transform, image_mode(model), batch_size, workers, progress, desc):
            out = torch.empty(0)
            if batch.indices:
                images = batch.images.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                out = fn(fast, images).float().cpu()
            yield Step(list(batch.indices), out, list(batch.failures))
