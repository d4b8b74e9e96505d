"""The cached linear probe: with the backbone frozen and the images unaugmented, the backbone's pooled
features are computed once, through the inference engine (fp32, torch backend), and only the head
(`HeadOnly`: dropout + fc) trains on them every epoch.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..engine.engine import build_engine
from ..runtime import distributed as dist_mod
from ..runtime.distributed import DistEnv
from .config import TrainConfig


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
    """Collate that keeps the items as they are: decoded (image, label) pairs and failures side by side."""
    return batch


def backbone_features(net: nn.Module, dataset: Dataset, cfg: TrainConfig, device: torch.device,
                      workers: int, env: DistEnv = dist_mod.SINGLE_PROCESS) -> CachedFeatures:
    """Every image's pooled features (N x num_features, fp32 on the CPU) through the frozen backbone as
    the engine runs it in fp32 (batch norm folded: the eval-mode network within float rounding). Under
    torchrun each rank computes its block of the images (`shard_range`) and all ranks get the whole set."""
    engine = build_engine(net, output="pool", precision="fp32", backend="torch", device=device)
    mine = list(dist_mod.shard_range(len(dataset), env))
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
        if good:
            pooled = engine(torch.stack([item[0] for _, item in good]))   # N x num_features
            for (i, (_, y)), f in zip(good, pooled):
                rows[i], labels[i] = f.clone(), y   # a row of its own (a view would carry the batch)
    for part in dist_mod.gather_objects((rows, labels, bad), env) if env.distributed else []:
        rows.update(part[0])
        labels.update(part[1])
        bad.update(part[2])
    features = torch.zeros(len(dataset), net.num_features)
    for i, f in rows.items():
        features[i] = f
    all_labels = [labels.get(i, -1) for i in range(len(dataset))]
    return CachedFeatures(features, all_labels, bad)
