"""Feature statistics: the float64 streaming accumulator (mergeable across processes) and ``.npz`` files
in pytorch-fid's layout (``mu``, ``sigma``) plus our metadata, which says how they were made.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..engine.options import PathLike
from ..runtime.files import atomic_path
from .functional import MetricWarning

STATS_FORMAT = "inceptionv3-stats/1"


# Metadata fields that must agree for two statistics to be comparable.
_COMPARED = ("weights_sha256", "dims", "tap", "mode")


class StatsAccumulator:
    """Mean and covariance of feature rows in float64, batch by batch, in O(dims^2) memory.

    Each batch is centred on its own mean and merged with Chan et al.'s pairwise update, which keeps full
    precision however large the mean is; accumulators from different processes merge the same way.
    """

    def __init__(self, dims: int, device: str | torch.device = "cpu") -> None:
        self.dims = dims
        self.n = 0
        self.mean = torch.zeros(dims, dtype=torch.float64, device=device)
        # sum of centred outer products
        self.m2 = torch.zeros(dims, dims, dtype=torch.float64, device=device)

    def _merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if n == 0:
            return
        total = self.n + n
        delta = mean.to(self.mean.device) - self.mean
        self.m2 += m2.to(self.m2.device) + torch.outer(delta, delta) * (self.n * n / total)
        self.mean += delta * (n / total)
        self.n = total

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        x = torch.as_tensor(features).to(self.mean.device, torch.float64)
        if x.dim() != 2 or x.shape[1] != self.dims:
            raise ValueError(f"expected N x {self.dims} features, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        mean = x.mean(dim=0)
        xc = x - mean
        self._merge(x.shape[0], mean, xc.T @ xc)

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Add another accumulator's rows (e.g. another rank's) into this one; returns self."""
        if other.dims != self.dims:
            raise ValueError(f"cannot merge {other.dims}-d statistics into {self.dims}-d ones")
        self._merge(other.n, other.mean, other.m2)
        return self

    def all_reduce(self) -> StatsAccumulator:
        """Merge every rank's rows (torch.distributed, if initialised); all ranks end equal. Returns self."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        world = dist.get_world_size()
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.mean.device)
        parts = [[torch.zeros_like(t) for _ in range(world)] for t in (n, self.mean, self.m2)]
        for out, t in zip(parts, (n, self.mean, self.m2)):
            dist.all_gather(out, t)
        merged = StatsAccumulator(self.dims, self.mean.device)
        for ni, mi, qi in zip(*parts):
            merged._merge(int(ni.item()), mi, qi)
        self.n, self.mean, self.m2 = merged.n, merged.mean, merged.m2
        return self

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) as float64 NumPy arrays; sigma with the N - 1 divisor, as np.cov."""
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 images, got {self.n}")
        return self.mean.cpu().numpy().copy(), (self.m2 / (self.n - 1)).cpu().numpy()


class StatsMismatchError(ValueError):
    """Two statistics were made with different weights, taps or preprocessing (raised under strict)."""


@dataclass
class Stats:
    """Feature mean and covariance plus how they were made (empty ``meta`` for foreign files)."""
    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    meta: dict = field(default_factory=dict)
    source: str = ""

    @property
    def dims(self) -> int:
        return int(self.mu.shape[0])


def save_stats(stats: Stats, path: PathLike) -> Path:
    """Write ``mu`` and ``sigma`` (pytorch-fid's keys, float64) and a JSON ``meta`` string, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: statistics files are .npz; use that suffix")
    meta = {"format": STATS_FORMAT, **stats.meta, "n": stats.n, "stats_dtype": "float64"}
    # A file object: given a name, np.savez would append its own suffix to the temp file.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=np.asarray(stats.mu, np.float64), sigma=np.asarray(stats.sigma, np.float64),
                 meta=np.array(json.dumps(meta)))
    return path


def load_stats(path: PathLike) -> Stats:
    """Read our, pytorch-fid's or TTUR's ``.npz`` statistics (keys ``mu`` and ``sigma``), as float64."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"mu", "sigma"} <= keys:
                raise ValueError(f"{path}: not a statistics file: it has keys {sorted(keys)}, expected 'mu' "
                                 f"and 'sigma' (pytorch-fid / TTUR / inceptionv3 stats)")
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            meta = json.loads(str(f["meta"])) if "meta" in keys else {}
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable .npz statistics file ({e})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    n = meta.pop("n", None)
    return Stats(mu, sigma, n, meta, str(path))


def check_compatible(a: Stats, b: Stats, strict: bool = False) -> list[str]:
    """Problems comparing ``a`` with ``b``: different weights, tap or mode, or unknown provenance.

    Each problem is warned about loudly (MetricWarning); with ``strict`` any problem raises
    StatsMismatchError instead. Different dims are always an error. Returns the messages.
    """
    if a.dims != b.dims:
        raise StatsMismatchError(f"{a.source or 'A'} has {a.dims}-d statistics, {b.source or 'B'} "
                                 f"{b.dims}-d; use the same --dims for both")
    problems = []
    for s in (a, b):
        if not s.meta:
            problems.append(f"{s.source or 'statistics'} carries no metadata (a pytorch-fid/TTUR file?): "
                            f"cannot check that it used the same weights and preprocessing")
    if a.meta and b.meta:
        for key in _COMPARED:
            if a.meta.get(key) != b.meta.get(key):
                problems.append(f"statistics differ in {key}: {a.meta.get(key)!r} ({a.source or 'A'}) vs "
                                f"{b.meta.get(key)!r} ({b.source or 'B'}); the numbers are not comparable")
    if problems and strict:
        raise StatsMismatchError("; ".join(problems) + " (stopped: --strict)")
    for p in problems:
        warnings.warn(p, MetricWarning, stacklevel=2)
    return problems
