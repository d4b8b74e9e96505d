"""Feature statistics: the float64 streaming accumulator (mergeable across processes) and ``.npz`` files
in pytorch-fid's layout (``mu``, ``sigma``) plus our metadata, which says how they were made.

Other tools' statistics files are read too, without pickle: pytorch-fid's / TTUR's and EDM's (``mu``,
``sigma``), clean-fid's (the same keys; its file names carry the mode), and ADM's reference batches
(``mu``, ``sigma`` and the spatial ``mu_s``, ``sigma_s`` of sFID, beside the images in ``arr_0``). What
each came from is recorded in ``Stats.meta`` (``tool``, and ``mode`` where the file says it).
"""
from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..engine.options import PathLike
from ..runtime.files import atomic_path
from .functional import MetricWarning
from .modes import SFID_TAP

STATS_FORMAT = "inceptionv3-stats/1"
TOOL = "inceptionv3"

# Metadata fields that must agree for two statistics to be comparable.
_COMPARED = ("weights_sha256", "dims", "tap", "mode")

# Statistics wider than this are refused before they are read: the widest feature any tool uses is 2048,
# and a forged header must not make us allocate sigma's dims^2 doubles.
MAX_DIMS = 16384

# clean-fid names its statistics files "{name}_{mode}_{split}_{resolution}.npz"; its modes in ours.
_CLEAN_FID_MODES = {"clean": "clean", "legacy_tensorflow": "tf", "legacy_pytorch": "pytorch-fid"}
_CLEAN_FID_NAME = re.compile(r"_(clean|legacy_tensorflow|legacy_pytorch)_[^_]+_\d+$")

# ADM's reference batches: the spatial statistics of sFID under these keys, made on the TF graph's
# "mixed_6/conv" tap (the tf mode's resize is that graph's).
SPATIAL_KEYS = ("mu_s", "sigma_s")


class StatsAccumulator:
    """Mean and covariance of feature rows in float64, batch by batch, in O(dims^2) memory.

    Rows are held (in float64) until ``BLOCK_ROWS`` have come; each block of them is
    centred on its own mean and merged with Chan et al.'s pairwise update, which keeps full precision
    however large the mean is; accumulators from different processes merge the same way. One block's
    product costs a fraction of what the same rows cost in a product and a dims x dims update per
    batch, and the blocks depend only on the order of the rows, not on the batches they came in.
    """

    BLOCK_ROWS = 512

    def __init__(self, dims: int, device: str | torch.device = "cpu") -> None:
        self.dims = dims
        self._n = 0
        self._mean = torch.zeros(dims, dtype=torch.float64, device=device)
        # sum of centred outer products
        self._m2 = torch.zeros(dims, dims, dtype=torch.float64, device=device)
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0

    @property
    def n(self) -> int:
        """Rows accumulated so far."""
        return self._n + self._pending_rows

    @property
    def mean(self) -> torch.Tensor:
        self._flush()
        return self._mean

    @property
    def m2(self) -> torch.Tensor:
        """The sum of centred outer products (dims x dims, float64)."""
        self._flush()
        return self._m2

    def _merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if n == 0:
            return
        total = self._n + n
        delta = mean.to(self._mean.device) - self._mean
        self._m2 += m2.to(self._m2.device) + torch.outer(delta, delta) * (self._n * n / total)
        self._mean += delta * (n / total)
        self._n = total

    def _merge_held(self, whole: bool) -> None:
        """Merge the held rows in blocks of ``BLOCK_ROWS``: all of them (``whole``), else the full blocks."""
        if not self._pending:
            return
        x = torch.cat(self._pending)
        end = x.shape[0] if whole else x.shape[0] // self.BLOCK_ROWS * self.BLOCK_ROWS
        for block in x[:end].split(self.BLOCK_ROWS):
            mean = block.mean(dim=0)
            xc = block - mean
            self._merge(block.shape[0], mean, xc.T @ xc)
        rest = x[end:]
        self._pending, self._pending_rows = ([rest] if rest.shape[0] else []), rest.shape[0]

    def _flush(self) -> None:
        self._merge_held(whole=True)

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        # a copy: the rows are held, and the caller may reuse its buffer
        x = torch.as_tensor(features).to(self._mean.device, torch.float64, copy=True)
        if x.dim() != 2 or x.shape[1] != self.dims:
            raise ValueError(f"expected N x {self.dims} features, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        self._pending.append(x)
        self._pending_rows += x.shape[0]
        if self._pending_rows >= self.BLOCK_ROWS:
            self._merge_held(whole=False)

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Add another accumulator's rows (e.g. another rank's) into this one; returns self."""
        if other.dims != self.dims:
            raise ValueError(f"cannot merge {other.dims}-d statistics into {self.dims}-d ones")
        self._flush()
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
        self._n, self._mean, self._m2 = merged._n, merged._mean, merged._m2
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


def save_stats(stats: Stats, path: PathLike, spatial: Stats | None = None) -> Path:
    """Write ``mu`` and ``sigma`` (pytorch-fid's keys, float64) and a JSON ``meta`` string, atomically;
    with ``spatial`` (sFID's statistics) also ``mu_s`` and ``sigma_s``, ADM's keys for them."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: statistics files are .npz; use that suffix")
    meta = {"format": STATS_FORMAT, "tool": TOOL, **stats.meta, "n": stats.n, "stats_dtype": "float64"}
    arrays = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64)}
    if spatial is not None:
        meta["spatial"] = {**spatial.meta, "n": spatial.n}
        arrays.update(mu_s=np.asarray(spatial.mu, np.float64), sigma_s=np.asarray(spatial.sigma, np.float64))
    # A file object: given a name, np.savez would append its own suffix to the temp file.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays, meta=np.array(json.dumps(meta)))
    return path


def _members(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each ``.npy`` member's (shape, dtype), from its header alone: nothing is allocated or unpickled."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _fortran, dtype = read_header(f)
            out[info.filename[:-4]] = (tuple(shape), dtype)
    return out


def _provenance(path: Path, keys: set[str], meta: dict) -> dict:
    """What made a file: ours say so in ``meta``; other tools' are told apart by their keys and names."""
    if meta:
        return {"tool": TOOL, **meta} if meta.get("format") == STATS_FORMAT else meta
    if set(SPATIAL_KEYS) <= keys or "arr_0" in keys:
        return {"tool": "adm", "mode": "tf"}
    match = _CLEAN_FID_NAME.search(path.stem)
    if match:
        return {"tool": "clean-fid", "mode": _CLEAN_FID_MODES[match.group(1)]}
    return {"tool": "pytorch-fid / TTUR / EDM"}


def _read_meta(path: Path, f: np.lib.npyio.NpzFile) -> dict:
    try:
        meta = json.loads(str(f["meta"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its 'meta' is not JSON ({e}); recompute the file with "
                         f"'inceptionv3 stats'") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its 'meta' is a JSON {type(meta).__name__}, not an object; recompute the "  # noqa: TRY004
                         f"file with 'inceptionv3 stats'")
    n = meta.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"{path}: its 'meta' gives an image count of {n!r}; recompute the file with "
                         f"'inceptionv3 stats'")
    return meta


def load_stats(path: PathLike, spatial: bool = False) -> Stats:
    """Statistics from an ``.npz`` file (ours, pytorch-fid's, TTUR's, clean-fid's, EDM's or ADM's), as
    float64; ``spatial``: sFID's (``mu_s``, ``sigma_s``) instead. Never unpickles: a file holding Python
    objects, a damaged or truncated file, or arrays that do not fit together raise ValueError naming the
    file and the reason."""
    path = Path(path)
    mu_key, sigma_key = SPATIAL_KEYS if spatial else ("mu", "sigma")
    try:
        members = _members(path)
        keys = set(members)
        if not {mu_key, sigma_key} <= keys:
            what = ("sFID statistics: it has no 'mu_s' and 'sigma_s' (write them with 'inceptionv3 stats "
                    "--sfid', or use ADM's reference batches)" if spatial else
                    "a statistics file: expected 'mu' and 'sigma' (pytorch-fid / TTUR / clean-fid / EDM / "
                    "ADM / inceptionv3 stats)")
            raise ValueError(f"{path}: not {what}; its arrays are {sorted(keys)}")
        for key in (mu_key, sigma_key, "meta"):
            if key in members and members[key][1].hasobject:
                raise ValueError(f"{path}: '{key}' holds pickled Python objects; refused (statistics are "
                                 f"plain arrays, and unpickling can run code)")
        (mu_shape, _), (sigma_shape, _) = members[mu_key], members[sigma_key]
        if len(mu_shape) != 1 or sigma_shape != (mu_shape[0], mu_shape[0]):
            raise ValueError(f"{path}: {mu_key} {mu_shape} and {sigma_key} {sigma_shape} do not fit together "
                             f"(expected D and D x D)")
        if mu_shape[0] > MAX_DIMS:
            raise ValueError(f"{path}: {mu_shape[0]}-d statistics; at most {MAX_DIMS} are read (the widest "
                             f"feature is 2048)")
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = f[mu_key].astype(np.float64), f[sigma_key].astype(np.float64)
            meta = _read_meta(path, f) if "meta" in keys else {}
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz statistics file ({e}); recompute or re-download it") \
            from None
    except ValueError as e:
        if str(path) in str(e):
            raise
        # numpy's own reasons (a bad header, truncated data, pickled data refused)
        raise ValueError(f"{path}: not a readable .npz statistics file ({e})") from None
    meta = _provenance(path, keys, meta)
    if spatial:
        meta = {**meta, **meta.get("spatial", {}), "tool": meta.get("tool")}
        meta.pop("spatial", None)
        meta.setdefault("tap", SFID_TAP)
        meta.setdefault("dims", int(mu.shape[0]))
    meta = dict(meta)
    n = meta.pop("n", None)
    return Stats(mu, sigma, n, meta, str(path))


def holds_statistics(path: PathLike) -> bool:
    """Whether an ``.npz`` file has statistics members (``mu``, ``sigma``), from the zip directory alone;
    a file that is not a readable zip counts, so that ``load_stats`` names what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as z:
            names = {Path(n).stem for n in z.namelist()}
    except (OSError, zipfile.BadZipFile):
        return True
    return {"mu", "sigma"} <= names


def has_spatial(path: PathLike) -> bool:
    """Whether a statistics file also holds sFID's spatial statistics (``mu_s``, ``sigma_s``)."""
    try:
        return set(SPATIAL_KEYS) <= set(_members(Path(path)))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        return False


def _foreign(s: Stats) -> bool:
    """Statistics that do not record their weights (another tool's file): only their mode can be checked."""
    return not s.meta.get("weights_sha256")


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
        if _foreign(s):
            tool = f" (written by {s.meta['tool']})" if s.meta.get("tool") else ""
            problems.append(f"{s.source or 'statistics'} carries no metadata{tool}: cannot check that it used "
                            f"the same weights and preprocessing")
    # Another tool's file records its mode at most (clean-fid's and ADM's): compare what both say.
    both_ours = not (_foreign(a) or _foreign(b))
    for key in _COMPARED if both_ours else ("mode",):
        va, vb = a.meta.get(key), b.meta.get(key)
        if va != vb and (both_ours or (va is not None and vb is not None)):
            problems.append(f"statistics differ in {key}: {va!r} ({a.source or 'A'}) vs "
                            f"{vb!r} ({b.source or 'B'}); the numbers are not comparable")
    if problems and strict:
        raise StatsMismatchError("; ".join(problems) + " (stopped: --strict)")
    for p in problems:
        warnings.warn(p, MetricWarning, stacklevel=2)
    return problems


def describe(s: Stats) -> str:
    """One line on what a statistics file holds: tool, mode, tap and dims, image count, weights."""
    m = s.meta
    parts = [f"tool {m.get('tool', 'unknown')}", f"mode {m.get('mode') or 'unknown'}", f"{s.dims}-d"]
    if m.get("tap"):
        parts.append(f"tap {m['tap']}")
    parts.append(f"n={s.n}" if s.n is not None else "n unknown")
    if m.get("weights"):
        parts.append(f"weights {m['weights']} ({str(m.get('weights_sha256', ''))[:12]})")
    if m.get("failed"):
        parts.append(f"{m['failed']} images failed to decode")
    return f"{s.source}: " + ", ".join(parts)
