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

import copy
from typing import Any

import torch
from torch import nn

from .resume import model_state_dict


class ModelEma:
    """Exponential moving average of a network's weights and BN statistics, evaluated and saved as best.

    The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates, so that short runs (and the
    first steps of long ones) are not dominated by the random initialisation.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, v in zip(self.module.state_dict().values(), net.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(v, 1.0 - d)
            else:
                e.copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": model_state_dict(self.module)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.decay, self.updates = state["decay"], state["updates"]
