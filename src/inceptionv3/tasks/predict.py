"""Classification: the top-k labels and probabilities of each image, through the engine."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..data.paths import expand_paths
from ..engine import runner
from ..engine.options import Calibration, EngineOptions, engine_options
from ..runtime.files import quote_path
from ..runtime.threads import resolve_device
from ..weights.load import load_model

DEFAULT_TOP_K = 5    # or every class, when the model has fewer


class ImageFailure(RuntimeError):
    """Raised in strict mode at the first image that cannot be used."""


def top_k_probabilities(logits: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices), each N x k, best first."""
    probs = logits.float().softmax(dim=1)
    return probs.topk(min(k, probs.shape[1]), dim=1)


def top_k_predictions(logits: torch.Tensor, k: int, names: Sequence[str] | None) -> list[list[dict]]:
    """Each row's top-k as ``predict`` reports them: ``{"index", "label", "probability"}``, best first
    (``label`` is the class index as text when the model has no class names)."""
    probs, idx = top_k_probabilities(logits, k)
    return [[{"index": c, "label": names[c] if names else str(c), "probability": p} for p, c in zip(p_row, c_row)]
            for p_row, c_row in zip(probs.tolist(), idx.tolist())]


def predict(
    inputs: Sequence[str | os.PathLike],
    weights: str | os.PathLike | nn.Module = "imagenet",
    top_k: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    strict: bool = False,
    progress: bool | None = None,
    arch: str | None = None,
    precision: str | None = None,
    backend: str | None = None,
    calibration: Calibration = None,
    *,
    options: EngineOptions | None = None,
) -> list[dict]:
    """Classify images; one result per input image, in input order.

    ``inputs`` are files, folders (recursive), glob patterns or ``@list.txt`` files. Each result is
    ``{"path", "predictions": [{"index", "label", "probability"}, ...]}`` or ``{"path", "error"}``.
    With ``strict=True`` the first unusable image raises ``ImageFailure``. ``top_k`` (default: 5, or every
    class of a model with fewer) larger than the model's classes is an error.

    ``options`` say how the engine runs (device, precision, backend, batching, int8 calibration); the
    keywords of the same names replace single settings (defaults: ``EngineOptions()``, fp32 on the
    fastest backend for the job).
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    options = engine_options(options, batch_size=batch_size, workers=workers, device=device, progress=progress,
                             precision=precision, backend=backend, calibration=calibration)
    resolve_device(options.device)     # a device this machine lacks is an error before any work
    paths = expand_paths(inputs)
    model = weights if isinstance(weights, nn.Module) else load_model(weights, **({"arch": arch} if arch else {}))
    names = model.meta.class_names
    classes = int(getattr(model, "num_classes", 0) or len(names or ()))
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, classes) if classes else DEFAULT_TOP_K
    elif classes and top_k > classes:
        shown = ", ".join(list(names)[:5]) + (", ..." if len(names) > 5 else "") if names else "unnamed"
        raise ValueError(f"--top-k {top_k}: the model has only {classes} classes ({shown}); "
                         f"use --top-k {classes} or less")
    results: list[dict | None] = [None] * len(paths)
    for step in runner.run(model, paths, "logits", options, desc="predict"):
        for i, reason in step.failures:
            if strict:
                raise ImageFailure(f"{quote_path(paths[i])}: {reason}")
            results[i] = {"path": str(paths[i]), "error": reason}
        if not step.indices:
            continue
        for i, rows in zip(step.indices, top_k_predictions(step.outputs, top_k, names)):
            results[i] = {"path": str(paths[i]), "predictions": rows}
    return results  # type: ignore[return-value]  (every slot is filled: a result or an error)
