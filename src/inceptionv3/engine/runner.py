"""The batched inference loop over image files that predict and features run.

Images are decoded and resized in worker processes (``inputs.decoded_batches``) while the engine computes;
failures travel with each batch so they can be reported in input order without stopping the run.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .engine import build_engine
from .inputs import decoded_batches, image_mode, model_transform
from .options import EngineOptions


@dataclass
class Step:
    """One batch's results: outputs for ``indices`` (positions in the input list), failures, and the
    precision the engine ran them at (precision "auto" is settled on the first batch)."""
    indices: list[int]
    outputs: torch.Tensor
    failures: list[tuple[int, str]]
    precision: str


def run(model: nn.Module, paths: Sequence[Path], output: str, options: EngineOptions,
        desc: str = "images") -> Iterator[Step]:
    """``output`` ("logits", "pool" or a tap from ``TAPS``) of every decodable image, in input order, on the CPU.

    The model runs as ``build_engine`` builds it from ``options`` (batch norm folded, sibling convs fused,
    int8 calibrated on ``options.calibration``); images are preprocessed as ``model.meta`` says.
    """
    transform = model_transform(model)
    engine = build_engine(model, output, options, images=len(paths))
    for batch in decoded_batches(paths, transform, options, image_mode(model), desc):
        out = engine(batch.images) if batch.indices else torch.empty(0)
        yield Step(list(batch.indices), out, list(batch.failures), engine.precision)
