"""Training: the small-data recipe as small functions, on one process or many (torchrun), crash-safe.

Recipe (works from scratch on a few thousand images, e.g. the embedded digits): AdamW without weight
decay on BN and bias parameters, a one-cycle LR schedule stepped per optimizer step, label smoothing 0.1,
gradient clipping at 2.0, aux loss weighted 0.4 when the aux head is on (only possible at >= 299 px).

A run folder holds: config.json (the TrainConfig, written first), metrics.jsonl (one JSON line per
epoch), last.pt (the newest checkpoint: model, optimizer, scheduler, every rank's RNG states, epoch and
step within it, partial epoch sums, history, config, class names, and a digest of it all), checkpoints/
(the last `keep_last` checkpoints, hard links named by global step), best.safetensors (the best
held-out top-1 so far, with class names and preprocessing, loadable by `weights.load_model`),
confusion.json (that epoch's held-out confusion matrix), bad_images.txt (images skipped, when any) and
tensorboard/ (event files, when tensorboard is installed). Checkpoint files are handled by `checkpoint.py`.

By default the step runs in bf16 autocast where the hardware has native bf16 (`--amp auto`) on
channels-last tensors; `--grad-checkpointing` trades compute for memory and `--compile` runs the forward
through torch.compile. A linear probe computes the frozen backbone's features once (`cache_features`).

Checkpoints are written atomically every epoch and every `save_every` steps; `resume` continues from the
newest one that loads and matches its digest. The data order is a pure function of (seed, epoch) and each
sample's augmentation of (seed, epoch, index), so a resumed or multi-process run sees exactly the batches
an uninterrupted single-process run sees.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

# Fields a resumed run may change: where and how it runs, not what it computes.
RESUME_MAY_CHANGE = ("out", "resume", "workers", "threads", "device", "save_every", "save_minutes",
                     "keep_last", "deterministic", "skip_nonfinite", "grad_checkpointing", "compile",
                     "compile_backend", "cache_features")


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A resumed run must compute what the saved run computed; list every field that differs."""
    now = cfg.to_dict()
    diff = [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {now[k]!r})"
            for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if diff:
        raise ValueError(f"--resume {cfg.resume}: that run was started with other settings: "
                         f"{'; '.join(diff)}. "
                         f"Resume with the run's own flags (its config.json), or start a new run in "
                         "another --out folder")


def rng_state() -> dict[str, Any]:
    """This process's random generators (torch CPU and CUDA, numpy, random), checkpoint-friendly."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
