"""Classification: top-k labels and probabilities per image."""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn as nn

from ..data.paths import expand_paths
from ..engine import runner
from ..weights.load import load_model


class ImageFailure(RuntimeError):
    """Raised in strict mode at the first image that cannot be used."""


def top_k_probabilities(logits: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices), each N x k, best first."""
    probs = logits.float().softmax(dim=1)
    return probs.topk(min(k, probs.shape[1]), dim=1)


def predict(
    inputs: Sequence[str | os.PathLike],
    weights: str | os.PathLike | nn.Module = "imagenet",
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    strict: bool = False,
    progress: bool = False,
    arch: str | None = None,
    precision: str = "fp32",
    backend: str = "auto",
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | torch.Tensor | None = None,
) -> list[dict]:
    """Classify images; one result per input image, in input order.

    ``inputs`` are files, folders (recursive), glob patterns or ``@list.txt`` files. Each result is
    ``{"path", "predictions": [{"index", "label", "probability"}, ...]}`` or ``{"path", "error"}``.
    With ``strict=True`` the first unusable image raises ``ImageFailure``.

    ``precision`` (auto, fp32, bf16, int8) and ``backend`` (auto, torch, onnxruntime, openvino) choose
    the engine (see ``accel``); int8 calibrates on ``calibration``: images (files, folders) like the
    inputs, or a preprocessed N x C x H x W tensor.
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    paths = expand_paths(inputs)
    model = weights if isinstance(weights, nn.Module) else load_model(weights, **({"arch": arch} if arch else {}))
    names = model.meta.class_names
    results: list[dict | None] = [None] * len(paths)
    if calibration is not None and not isinstance(calibration, torch.Tensor):
        spec = [calibration] if isinstance(calibration, (str, os.PathLike)) else list(calibration)
        calibration = runner.calibration_images(model, spec, workers=workers)
    for step in runner.run(model, paths, "logits", batch_size, workers, device, progress, desc="predict",
                              precision=precision, backend=backend, calibration=calibration):
        for i, reason in step.failures:
            if strict:
                raise ImageFailure(f"{paths[i]}: {reason}")
            results[i] = {"path": str(paths[i]), "error": reason}
        if not step.indices:
            continue
        probs, idx = top_k_probabilities(step.outputs, top_k)
        for i, p_row, c_row in zip(step.indices, probs.tolist(), idx.tolist()):
            results[i] = {"path": str(paths[i]), "predictions": [
                {"index": c, "label": names[c] if names else str(c), "probability": p}
                for p, c in zip(p_row, c_row)
            ]}
    return results  # type: ignore[return-value]  (every slot is filled: a result or an error)
