"""Generator metrics over folders, statistics files, tensors and iterators of batches.

The network is the FID graph (weights entry ``fid``: 1008 classes, padding-excluded average pools,
max-pool in Mixed_7c), read at one of four taps (64, 192, 768 or 2048 dims). What differs between the
reference tools is the preprocessing, so it is a named mode, recorded in every statistics file:

* ``pytorch-fid``: pixels / 255, ``F.interpolate`` bilinear to 299 (align_corners=False, no antialias),
  then 2x - 1 (pytorch-fid);
* ``tf``: pixels in 0..255, TF1 ``resize_bilinear`` to 299 (align_corners=False, no half-pixel centres),
  then (x - 128) / 128 (TTUR, torch-fidelity);
* ``clean``: pixels in 0..255, PIL bicubic resize of each channel as a float image, clipped to 0..255,
  then (x - 128) / 128 (clean-fid's "clean" mode).

Files are decoded and preprocessed image by image in worker processes (so mixed sizes, grayscale, RGBA
and 16-bit files all work); the network runs in inference mode, channels-last, with batch norm folded
into the convolutions. Statistics accumulate in float64 in O(dims^2) memory and merge across processes.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import __version__
from . import fid as fidmath
from .fid import MetricWarning
from .fileio import atomic_path
from .inference import fold_batch_norm
from .model import TAPS
from .runtime import resolve_device

__all__ = [
    "DIMS", "FID_NET_CONFIG", "MODES", "FeatureNet", "ImageTransform", "Stats", "StatsAccumulator",
    "StatsMismatchError", "check_compatible", "compute_features", "compute_stats", "fid", "inception_score",
    "kid", "load_metric_model", "load_stats", "precision_recall", "prepare", "save_stats",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, Sequence[PathLike], torch.Tensor, Iterable[torch.Tensor], "Stats"]

MODES = ("pytorch-fid", "tf", "clean")
INPUT_SIZE = 299
# Feature dims -> tap, pytorch-fid's BLOCK_INDEX_BY_DIM over our TAPS table (spatial taps are averaged).
DIMS: dict[int, str] = {TAPS[name].channels: name for name in ("maxpool1", "maxpool2", "Mixed_6e", "pool")}
# The TF "2015-12-05" graph as pytorch-fid ports it, from the same model code through its parameters.
FID_NET_CONFIG = {"aux_logits": False, "count_include_pad": False, "last_pool": "max"}
STATS_FORMAT = "inceptionv3-stats/1"
# Metadata fields that must agree for two statistics to be comparable.
_COMPARED = ("weights_sha256", "dims", "tap", "mode")


# ---------------------------------------------------------------------------------------- preprocessing


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of: {', '.join(MODES)}")


def _tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False), torch-fidelity's
    bit-exact arithmetic: source = destination * (in / out), no centring, edges clamped."""
    h, w = x.shape[-2:]

    def grid(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / size, dtype=torch.float32)
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * scale
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.to(pos.dtype)

    x_lo, x_hi, dx = grid(w)
    y_lo, y_hi, dy = grid(h)
    top, bottom = x.index_select(-2, y_lo), x.index_select(-2, y_hi)
    in_00, in_01 = top.index_select(-1, x_lo), top.index_select(-1, x_hi)
    in_10, in_11 = bottom.index_select(-1, x_lo), bottom.index_select(-1, x_hi)
    in_0 = in_00 + (in_01 - in_00) * dx.view(1, 1, 1, size)
    in_1 = in_10 + (in_11 - in_10) * dx.view(1, 1, 1, size)
    return in_0 + (in_1 - in_0) * dy.view(1, 1, size, 1)


def _clean_resize(pixels: torch.Tensor) -> torch.Tensor:
    """clean-fid's resize: each channel as a float32 PIL image, bicubic to 299, clipped to 0..255."""
    out = []
    for img in pixels.detach().cpu().to(torch.float32).numpy():      # C x H x W, values 0..255
        chans = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize(
            (INPUT_SIZE, INPUT_SIZE), resample=Image.BICUBIC)).clip(0, 255) for c in img]
        out.append(np.stack(chans))
    return torch.from_numpy(np.stack(out)).to(pixels.device)


def prepare(images: torch.Tensor, mode: str = "pytorch-fid") -> torch.Tensor:
    """N x 3 x H x W images -> the network's N x 3 x 299 x 299 input in ``mode``.

    ``images``: uint8 in 0..255, or floating point in [0, 1] (pytorch-fid's convention). One channel
    is repeated to three. Runs on the images' device (``clean`` resizes on the CPU with PIL).
    """
    _check_mode(mode)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected N x 3 x H x W (or N x 1 x H x W) images, got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    is_u8 = images.dtype == torch.uint8
    if not is_u8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
    if not is_u8 and images.numel():
        lo, hi = (float(v) for v in torch.aminmax(images))
        if lo < -1e-3 or hi > 1 + 1e-3:   # the classic mistake: a generator's [-1, 1] or 0..255 floats
            raise ValueError(f"float images must be in [0, 1], got values from {lo:.3g} to {hi:.3g}; map "
                             f"[-1, 1] outputs with (x + 1) / 2, or pass uint8 images")
    if mode == "pytorch-fid":
        x = images.to(torch.float32).div(255) if is_u8 else images.to(torch.float32)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1
    pixels = images.to(torch.float32) if is_u8 else images.to(torch.float32) * 255
    if mode == "tf":
        x = _tf1_bilinear(pixels, INPUT_SIZE)
    else:
        x = _clean_resize(pixels)
    return (x - 128) / 128


class ImageTransform:
    """PIL image -> prepared 3 x 299 x 299 tensor; picklable, so decode workers run it."""

    def __init__(self, mode: str) -> None:
        _check_mode(mode)
        self.mode = mode

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        u8 = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return prepare(u8[None], self.mode)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


# ---------------------------------------------------------------------------------------------- network


def load_metric_model(weights: str | PathLike | nn.Module = "fid") -> nn.Module:
    """The metric network: a registry name (default ``fid``), a weights file, or a model as is.

    A bare 1008-class state dict without an aux head (pytorch-fid's and torch-fidelity's files) is
    built as the FID graph; files with our metadata or a registry hash build what they say.
    """
    from .model import InceptionV3
    from .weights import ModelMeta, WeightsError, get_entry, load_model, read_state_dict, sha256_file

    if isinstance(weights, nn.Module):
        return weights.eval()
    if isinstance(weights, str) and not Path(weights).is_file():
        return load_model(weights)        # a registry name (load_model explains unknown names)
    sd, meta = read_state_dict(weights)
    fc = sd.get("fc.weight")
    if not (meta.get("arch") is None and fc is not None and fc.shape[0] == 1008
            and not any(k.startswith("AuxLogits.") for k in sd)):
        return load_model(weights)
    # Built here from the one read (reading a 95 MB file twice costs seconds on a busy machine).
    log.debug("%s: a bare 1008-class state dict; building the FID graph %s", weights, FID_NET_CONFIG)
    model = InceptionV3(num_classes=1008, init_weights=False, **FID_NET_CONFIG)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:   # missing / unexpected / mis-shaped keys, listed by torch
        raise WeightsError(f"{weights}: not an FID-graph state dict ({' '.join(str(e).split())[:400]})"
                           ) from None
    entry = get_entry("fid")
    model.meta = ModelMeta(arch="inception_v3", num_classes=1008, model_config=dict(model.config),
                           preprocess=entry.preprocess, class_names=None, source=str(weights),
                           sha256=sha256_file(weights))
    return model.eval()


class FeatureNet:
    """The metric network and one preprocessing mode: images in, N x dims features (and logits) out.

    ``logits`` are the FID net's 1008 logits without the fc bias (pool @ W.T), the Inception Score's
    input as in the original code and torch-fidelity.
    """

    def __init__(self, weights: str | PathLike | nn.Module = "fid", mode: str = "pytorch-fid",
                 dims: int = 2048, device: str = "auto", fold_bn: bool = True) -> None:
        _check_mode(mode)
        if dims not in DIMS:
            raise ValueError(f"dims must be one of {sorted(DIMS)} (pytorch-fid's taps), got {dims}")
        self.mode, self.dims, self.tap = mode, dims, DIMS[dims]
        self.device = resolve_device(device)
        model = load_metric_model(weights)
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{type(model).__name__} has no feature taps (forward_intermediates)")
        from .weights import state_dict_digest

        meta = getattr(model, "meta", None)
        self.weights_source = str(getattr(meta, "source", None) or type(model).__name__)
        self.weights_sha256 = getattr(meta, "sha256", None) or "state_dict:" + state_dict_digest(model)
        self.num_classes = int(getattr(model, "num_classes", 0))
        if isinstance(weights, nn.Module):
            model = copy.deepcopy(model)       # the caller's model stays as it was
        model = fold_batch_norm(model.eval()) if fold_bn else model.eval()
        self.model = model.to(self.device, memory_format=torch.channels_last)

    def meta(self) -> dict:
        """What statistics made with this net record about it."""
        return {"weights": self.weights_source, "weights_sha256": self.weights_sha256, "tap": self.tap,
                "dims": self.dims, "mode": self.mode, "dtype": "float32", "version": __version__}

    @torch.inference_mode()
    def forward_prepared(self, x: torch.Tensor, logits: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N x dims float32 features, N x classes unbiased logits or None) of prepared 299 px inputs."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        tap = "pool" if logits else self.tap
        out = self.model.forward_intermediates(x, [tap, self.tap] if tap != self.tap else [tap])
        feats = out[self.tap]
        if feats.dim() == 4:
            feats = feats.mean(dim=(2, 3))   # spatial taps: global average, as pytorch-fid
        if feats.shape[1] != self.dims:
            raise ValueError(f"the network's {self.tap} tap has {feats.shape[1]} channels, not {self.dims}")
        lg = out["pool"] @ self.model.fc.weight.T if logits else None
        return feats.float(), (lg.float() if lg is not None else None)

    def __call__(self, images: torch.Tensor, logits: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of raw images (uint8 0..255 or float [0, 1], N x 3 x H x W), preprocessed in the mode."""
        return self.forward_prepared(prepare(images.to(self.device), self.mode), logits)


# ---------------------------------------------------------------------------------- streaming statistics


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
        import torch.distributed as dist

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


# ----------------------------------------------------------------------------------------- stats files


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


# ------------------------------------------------------------------------------------- running the net


@dataclass
class _Run:
    accumulator: StatsAccumulator | None
    features: list[torch.Tensor]
    logits: list[torch.Tensor]
    failures: list[tuple[str, str]]
    n: int = 0


def _is_stats_file(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) and str(x).endswith(".npz") and Path(x).is_file()


def _image_paths(source: PathLike | Sequence[PathLike]) -> list[Path]:
    from .transforms import expand_paths

    return expand_paths([source] if isinstance(source, (str, os.PathLike)) else list(source))


def _is_path_source(source: Any) -> bool:
    if isinstance(source, (str, os.PathLike)):
        return True
    return isinstance(source, (list, tuple)) and bool(source) and all(
        isinstance(s, (str, os.PathLike)) for s in source)


def _run(source: Source, net: FeatureNet, keep_features: bool, logits: bool, batch_size: int,
         workers: int | None, progress: bool, distributed: bool = False) -> _Run:
    """Push every image of ``source`` through ``net``: accumulate stats, keep features/logits if asked."""
    run = _Run(None if keep_features else StatsAccumulator(net.dims, net.device), [], [], [])

    def consume(feats: torch.Tensor, lg: torch.Tensor | None) -> None:
        run.n += feats.shape[0]
        if run.accumulator is not None:
            run.accumulator.update(feats)
        if keep_features:
            run.features.append(feats.cpu())
        if lg is not None:
            run.logits.append(lg.cpu())

    if _is_path_source(source):
        from .inference import decoded_batches

        paths = _image_paths(source)
        if distributed:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                paths = paths[dist.get_rank()::dist.get_world_size()]
        for batch in decoded_batches(paths, ImageTransform(net.mode), "RGB", batch_size, workers, progress,
                                     desc=f"{net.mode} features"):
            run.failures += [(str(paths[i]), why) for i, why in batch.failures]
            if batch.indices:
                consume(*net.forward_prepared(batch.images, logits))
        for path, why in run.failures:
            log.warning("skipped %s: %s", path, why)
    elif isinstance(source, torch.Tensor):
        for chunk in source.split(batch_size):
            consume(*net(chunk, logits))
    elif isinstance(source, Iterable):
        for chunk in source:
            if not isinstance(chunk, torch.Tensor):
                raise TypeError(f"an iterator of image batches must yield tensors, "
                                f"got {type(chunk).__name__}")
            consume(*net(chunk, logits))
    else:
        raise TypeError(f"cannot read images from a {type(source).__name__}: pass a folder, files, a "
                        f"tensor or an iterator of N x 3 x H x W tensors")
    return run


def compute_features(source: Source, net: FeatureNet | None = None, logits: bool = False,
                     batch_size: int = 50, workers: int | None = None, progress: bool = False,
                     **net_kwargs: Any) -> dict:
    """{"features": N x dims float32, "logits": N x classes or None, "failures": [(path, why)]}."""
    if _is_stats_file(source) or isinstance(source, Stats):
        raise ValueError(f"{source}: KID, the Inception Score and precision/recall need the images "
                         f"themselves; a statistics file only holds their mean and covariance")
    net = net or FeatureNet(**net_kwargs)
    run = _run(source, net, True, logits, batch_size, workers, progress)
    dims, classes = net.dims, net.num_classes
    feats = torch.cat(run.features) if run.features else torch.zeros(0, dims)
    lg = (torch.cat(run.logits) if run.logits else torch.zeros(0, classes)) if logits else None
    return {"features": feats, "logits": lg, "failures": run.failures}


def compute_stats(source: Source, net: FeatureNet | None = None, batch_size: int = 50,
                  workers: int | None = None, progress: bool = False, distributed: bool = False,
                  **net_kwargs: Any) -> Stats:
    """Statistics of a folder / files / tensor / iterator of batches, or read from an ``.npz`` file.

    ``distributed=True`` under torchrun: each rank reads its share of the files and the ranks' statistics
    are merged (every rank returns the full statistics). Fewer than 2 usable images is an error (``fid``
    also warns when there are fewer images than dims).
    """
    if isinstance(source, Stats):
        return source
    if _is_stats_file(source):
        return load_stats(source)
    net = net or FeatureNet(**net_kwargs)
    run = _run(source, net, False, False, batch_size, workers, progress, distributed)
    acc = run.accumulator
    if distributed:
        acc.all_reduce()
    label = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    if acc.n < 2:
        failed = f" ({len(run.failures)} failed to decode)" if run.failures else ""
        raise ValueError(f"{label}: {acc.n} usable image(s){failed}; statistics need at least 2 "
                         f"(and FID needs many: 50,000 is the usual count, at least {net.dims})")
    mu, sigma = acc.compute()
    meta = {**net.meta(), "failed": len(run.failures)}
    return Stats(mu, sigma, acc.n, meta, label)


def _warn_few(n: int | None, dims: int, label: str, out: list[str]) -> None:
    if n is not None and n < dims:
        msg = (f"{label}: {n} images for {dims}-d features: the covariance is singular and FID is biased "
               f"upwards; use at least {dims} images (papers use 50,000)")
        warnings.warn(msg, MetricWarning, stacklevel=3)
        out.append(msg)


def fid(a: Source, b: Source, *, weights: str | PathLike | nn.Module = "fid", mode: str | None = None,
        dims: int | None = None, device: str = "auto", batch_size: int = 50, workers: int | None = None,
        legacy_sqrtm: bool = False, strict: bool = False, progress: bool = False) -> dict:
    """FID between two sources (folders, files, ``.npz`` statistics, tensors, iterators of batches).

    ``mode`` and ``dims`` default to those of a statistics file among the inputs (so images are scored
    the way the reference statistics were made), else ``pytorch-fid`` and 2048. Returns {"fid",
    "method", "n", "dims", "diagnostics", "warnings", "meta"}; statistics made with other weights, taps or
    modes warn (or raise under ``strict``).
    """
    sa, sb = (load_stats(x) if _is_stats_file(x) else x for x in (a, b))
    given = [s for s in (sa, sb) if isinstance(s, Stats)]
    if mode is None:
        mode = next((s.meta["mode"] for s in given if s.meta.get("mode") in MODES), "pytorch-fid")
    if dims is None:
        dims = given[0].dims if given else 2048
    net = None if len(given) == 2 else FeatureNet(weights, mode, dims, device)
    sa = compute_stats(sa, net, batch_size, workers, progress)
    sb = compute_stats(sb, net, batch_size, workers, progress)
    out_warnings = list(check_compatible(sa, sb, strict))
    for s in (sa, sb):
        _warn_few(s.n, s.dims, s.source, out_warnings)
    arrays: list[Any] = [sa.mu, sa.sigma, sb.mu, sb.sigma]
    if net is not None and net.device.type != "cpu" and not legacy_sqrtm:
        arrays = [torch.from_numpy(x).to(net.device) for x in arrays]     # the eigh route runs there too
    res = fidmath.frechet_details(*arrays, method="sqrtm" if legacy_sqrtm else "eigh")
    return {"fid": res.value, "method": res.method, "n": [sa.n, sb.n], "dims": sa.dims,
            "diagnostics": res.as_dict(), "warnings": out_warnings, "meta": [sa.meta, sb.meta]}


def kid(a: Source, b: Source, *, weights: str | PathLike | nn.Module = "fid", mode: str = "pytorch-fid",
        dims: int = 2048, device: str = "auto", batch_size: int = 50, workers: int | None = None,
        subsets: int = 100, subset_size: int = 1000, seed: int = 2020, progress: bool = False) -> dict:
    """KID (cubic polynomial kernel, ``subsets`` random subsets of ``subset_size``): mean and std."""
    net = FeatureNet(weights, mode, dims, device)
    fa = compute_features(a, net, False, batch_size, workers, progress)
    fb = compute_features(b, net, False, batch_size, workers, progress)
    f1, f2 = fa["features"].to(net.device), fb["features"].to(net.device)
    res = fidmath.kid(f1, f2, subsets, subset_size, seed)
    return {"kid": res.mean, "kid_std": res.std, "subsets": subsets, "subset_size": subset_size,
            "n": [len(fa["features"]), len(fb["features"])], "meta": net.meta(),
            "failed": len(fa["failures"]) + len(fb["failures"])}


def inception_score(a: Source, *, weights: str | PathLike | nn.Module = "fid",
                    mode: str = "pytorch-fid", device: str = "auto", batch_size: int = 50,
                    workers: int | None = None, splits: int = 10, seed: int = 2020,
                    progress: bool = False) -> dict:
    """Inception Score over ``splits`` splits: softmax over the net's logits without the fc bias."""
    net = FeatureNet(weights, mode, 2048, device)
    fa = compute_features(a, net, True, batch_size, workers, progress)
    res = fidmath.inception_score(fa["logits"], splits, True, seed)
    return {"is": res.mean, "is_std": res.std, "splits": splits, "n": len(fa["logits"]),
            "logits": f"softmax over the {net.num_classes} logits without the fc bias (as the original "
                      f"Inception Score code and torch-fidelity)",
            "meta": net.meta(), "failed": len(fa["failures"])}


def precision_recall(generated: Source, real: Source, *, weights: str | PathLike | nn.Module = "fid",
                     mode: str = "pytorch-fid", dims: int = 2048, device: str = "auto", batch_size: int = 50,
                     workers: int | None = None, k: int = 3, progress: bool = False) -> dict:
    """Improved precision/recall (Kynkäänniemi et al. 2019) on the same features as FID."""
    net = FeatureNet(weights, mode, dims, device)
    fg = compute_features(generated, net, False, batch_size, workers, progress)
    fr = compute_features(real, net, False, batch_size, workers, progress)
    out = fidmath.precision_recall(fg["features"], fr["features"], k)
    return {**out, "n": [len(fg["features"]), len(fr["features"])], "meta": net.meta()}
