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

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..runtime import distributed as dist_mod
from ..runtime.distributed import DistEnv
from .config import TrainConfig
from .loop import autocast


class HeadOnly(nn.Module):
    """A network's classifier head (dropout, fc) over pooled features: what a cached linear probe trains.

    It shares the network's `dropout` and `fc` modules, so training it trains the network's head."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.dropout, self.fc = net.dropout, net.fc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))   # N x num_features -> N x num_classes

    def forward_train(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.forward(features), None


class CachedFeatures(Dataset):
    """Pooled backbone features of a dataset, computed once: item `i` or `(epoch, i)` -> (features, label),
    or the `BadImage` (None when unknown) of an image that failed to decode."""

    def __init__(self, features: torch.Tensor, labels: list[int], bad: dict[int, Any]) -> None:
        self.features, self.labels, self.bad = features, labels, bad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]):
        i = item[1] if isinstance(item, tuple) else item
        if i in self.bad:
            return self.bad[i]
        return self.features[i], self.labels[i]


def caches_features(cfg: TrainConfig, aux: bool) -> bool:
    """Whether the backbone's features can be computed once and reused every epoch: the backbone is
    frozen (in eval mode), the images are not randomly augmented, and only the final head trains."""
    return (cfg.cache_features and cfg.freeze_until == "all" and not cfg.augment and not aux
            and cfg.ema_decay == 0)


def _as_list(batch: list) -> list:
    return batch


@torch.no_grad()
def backbone_features(net: nn.Module, dataset: Dataset, cfg: TrainConfig, device: torch.device,
                      workers: int, env: DistEnv = dist_mod.SINGLE_PROCESS) -> CachedFeatures:
    """Every image's pooled features (N x num_features, fp32 on the CPU) through the frozen backbone in
    eval mode, as training would compute them (same autocast and layout). Under torchrun each rank
    computes every N-th image and all ranks get the whole set."""
    net.eval()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    mine = list(range(env.rank, len(dataset), env.world_size))
    # Its own generator: a loader without one draws its seed from the global RNG, which the dropout masks
    # of the head's training then would not get.
    loader = torch.utils.data.DataLoader(Subset(dataset, mine), batch_size=cfg.batch_size, num_workers=workers,
                                         collate_fn=_as_list, generator=torch.Generator())
    rows: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    bad: dict[int, Any] = {}
    at = 0
    for batch in loader:
        index = mine[at: at + len(batch)]
        at += len(batch)
        good = [(i, item) for i, item in zip(index, batch) if isinstance(item, tuple)]
        bad.update((i, item) for i, item in zip(index, batch) if not isinstance(item, tuple))
        if not good:
            continue
        x = torch.stack([item[0] for _, item in good]).to(device, memory_format=layout)
        with autocast(device, cfg.amp):
            pooled = net.forward_head(net.forward_features(x), pre_logits=True)
        for (i, (_, y)), f in zip(good, pooled.float().cpu()):
            rows[i], labels[i] = f, y
    for part in dist_mod.gather_objects((rows, labels, bad), env) if env.distributed else []:
        rows.update(part[0])
        labels.update(part[1])
        bad.update(part[2])
    width = net.num_features
    features = torch.zeros(len(dataset), width)
    for i, f in rows.items():
        features[i] = f
    all_labels = [labels.get(i, -1) for i in range(len(dataset))]
    return CachedFeatures(features, all_labels, bad)
