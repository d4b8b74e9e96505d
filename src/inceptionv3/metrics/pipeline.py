"""Generator metrics over folders, sample archives, statistics files, tensors and iterators of batches.

What differs between the reference tools is the preprocessing, so it is a named mode (``modes.MODES``,
``preprocess``), recorded in every statistics file. Files and archive members (ZIP, ``.npy`` / ``.npz``
arrays, tar shards: ``data.samples``) are decoded and preprocessed image by image in worker processes (so
mixed sizes, grayscale, RGBA and 16-bit files all work) while the engine runs the metric network
(``featurenet.FeatureNet``). Statistics accumulate in float64 in O(dims^2) memory.

Under torchrun each rank reads its block of the files (or of the shards) and the ranks' statistics merge
in rank order, so the result does not depend on timing; with the engine's features independent of the
batch they run in (docs/metrics.md measures it), FID does not depend on the batch size or the number of
processes beyond float64 rounding. The math itself is ``functional``'s.
"""
from __future__ import annotations

import atexit
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.paths import expand_paths
from ..data.samples import (
    TarShards,
    count_samples,
    is_sample_set,
    npz_holds_statistics,
    open_samples,
    sample_batches,
)
from ..engine.inputs import decoded_batches, thread_budget
from ..engine.options import EngineOptions, PathLike, engine_options
from ..runtime import distributed as dist_mod
from ..runtime.threads import resolve_device
from . import functional as fidmath
from .featurenet import FeatureNet
from .functional import MetricWarning
from .modes import METRIC_OPTIONS, MODES
from .preprocess import ImageTransform
from .stats import Stats, StatsAccumulator, check_compatible, load_stats

log = logging.getLogger(__name__)

Source = Union[PathLike, Sequence[PathLike], torch.Tensor, Iterable[torch.Tensor], "Stats"]


@dataclass
class _Run:
    accumulator: StatsAccumulator | None
    features: list[torch.Tensor]
    logits: list[torch.Tensor]
    failures: list[tuple[str, str]]
    n: int = 0


def _is_stats_file(x: Any) -> bool:
    """An ``.npz`` file of statistics (``mu``, ``sigma``); an ``.npz`` of images is a sample set."""
    if not (isinstance(x, (str, os.PathLike)) and str(x).endswith(".npz") and Path(x).is_file()):
        return False
    return npz_holds_statistics(x)


def _read_stats(path: PathLike) -> Stats:
    log.info("%s: a statistics file (mu, sigma), not images", path)
    return load_stats(path)


def _image_paths(source: PathLike | Sequence[PathLike]) -> list[Path]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    archive = next((x for x in items if len(items) > 1 and is_sample_set(x)), None)
    if archive is not None:
        raise ValueError(f"{archive}: a sample set is a source of its own; pass one archive, array file or "
                         f"shard pattern per set, not in a list with other inputs")
    return expand_paths(items)


def _plan(net: FeatureNet | None, *sources: Any) -> None:
    """Size ``net``'s engine for every file the job will read (both sets of a FID, KID or PRD run)."""
    if net is not None:
        net.plan(sum(_known_count(s) or 0 for s in sources if _is_path_source(s) and not _is_stats_file(s)))


def _known_count(source: PathLike | Sequence[PathLike]) -> int | None:
    """Images in a path source known before reading it (None for tar shards, whose count is not)."""
    if is_sample_set(source):
        return count_samples(source)
    return len(_image_paths(source))


def _sharded(distributed: bool | None, source: Any) -> bool:
    """Whether ``source`` is split between ranks: files and archives under torchrun (``None``: when torchrun
    started this process); tensors and iterators only when asked, as each rank's own samples."""
    if distributed is None:
        return _is_path_source(source) and dist_mod.env_from_environ().distributed
    return distributed


def _rank_env(device: torch.device) -> dist_mod.DistEnv:
    """This rank's place, joining torchrun's process group first if nobody has (left at exit)."""
    if not dist_mod.current_env().distributed:
        dist_mod.setup(device)
        atexit.register(dist_mod.teardown)
    return dist_mod.current_env()


def _join(options: EngineOptions, distributed: bool | None, *sources: Any) -> EngineOptions:
    """``options`` for this rank: under a sharded run, the group joined and this rank's own GPU."""
    if not any(_sharded(distributed, s) for s in sources):
        return options
    device = resolve_device(options.device)
    env = _rank_env(device)
    return engine_options(options, device=str(dist_mod.local_device(device, env)))


def _is_path_source(source: Any) -> bool:
    if isinstance(source, (str, os.PathLike)):
        return True
    return isinstance(source, (list, tuple)) and bool(source) and all(
        isinstance(s, (str, os.PathLike)) for s in source)


def count_images(source: Source) -> int | None:
    """How many images ``source`` holds, known before any compute (None for iterators and statistics):
    lets a metric check its subset size, splits or k against the inputs first."""
    if _is_stats_file(source) or isinstance(source, Stats):
        return None
    if _is_path_source(source):
        return _known_count(source)
    if isinstance(source, torch.Tensor):
        return int(source.shape[0])
    return None


def _run_options(net: FeatureNet | None, options: EngineOptions | None, **settings: Any) -> EngineOptions:
    """The options a run uses: ``options``, else the net's, else ``METRIC_OPTIONS``; keywords replace."""
    base = options if options is not None else net.options if net is not None else METRIC_OPTIONS
    return engine_options(base, **settings)


def _run(source: Source, net: FeatureNet, keep_features: bool, logits: bool, options: EngineOptions,
         env: dist_mod.DistEnv = dist_mod.SINGLE_PROCESS) -> _Run:
    """Push every image of ``source`` (this rank's block of it, if ``env`` has several) through ``net``:
    accumulate stats, keep features/logits if asked."""
    run = _Run(None if keep_features else StatsAccumulator(net.dims, net.device), [], [], [])

    def consume(feats: torch.Tensor, lg: torch.Tensor | None) -> None:
        run.n += feats.shape[0]
        if run.accumulator is not None:
            run.accumulator.update(feats)
        if keep_features:
            run.features.append(feats.cpu())
        if lg is not None:
            run.logits.append(lg.cpu())

    if is_sample_set(source):
        samples = open_samples(source, ImageTransform(net.mode))
        log.info("%s", samples.describe())
        shards = isinstance(samples, TarShards)
        if env.distributed:   # this rank's block of the images (of the shards); statistics merge afterwards
            samples = samples.select(dist_mod.shard_range(len(samples.urls) if shards else len(samples), env))
        if not shards:
            net.plan(len(samples))
        batches = sample_batches(samples, options.batch_size, thread_budget(options))
        with tqdm(total=None if shards else len(samples), desc=f"{net.mode} features", unit="img",
                  disable=not options.progress, leave=False) as bar:
            for sb in batches:
                run.failures += sb.failures
                if sb.names:
                    consume(*net.forward_prepared(sb.images, logits))
                bar.update(len(sb.names) + len(sb.failures))
        for name, why in run.failures:
            log.warning("skipped %s: %s", name, why)
    elif _is_path_source(source):
        paths = _image_paths(source)
        if env.distributed:   # this rank's block of the files; the statistics are merged afterwards
            paths = [paths[i] for i in dist_mod.shard_range(len(paths), env)]
        net.plan(len(paths))
        for batch in decoded_batches(paths, ImageTransform(net.mode), options, "RGB", desc=f"{net.mode} features"):
            run.failures += [(str(paths[i]), why) for i, why in batch.failures]
            if batch.indices:
                consume(*net.forward_prepared(batch.images, logits))
        for path, why in run.failures:
            log.warning("skipped %s: %s", path, why)
    elif isinstance(source, torch.Tensor):
        for chunk in source.split(options.batch_size):
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


def _need_images(*sources: Any) -> None:
    """A statistics input to a metric that needs the images is an error, raised before anything loads."""
    for source in sources:
        if _is_stats_file(source) or isinstance(source, Stats):
            raise ValueError(f"{source}: KID, the Inception Score and precision/recall need the images "
                             f"themselves; a statistics file only holds their mean and covariance")


def compute_features(source: Source, net: FeatureNet | None = None, logits: bool = False,
                     batch_size: int | None = None, workers: int | None = None, progress: bool | None = None,
                     distributed: bool | None = None, *, options: EngineOptions | None = None,
                     **net_kwargs: Any) -> dict:
    """{"features": N x dims float32, "logits": N x classes or None, "failures": [(path, why)]}.

    ``net`` defaults to ``FeatureNet(options=options, **net_kwargs)``; ``options`` (default: the net's)
    say how to batch and decode, the keywords of the same names replace single settings. Sharded
    (``distributed`` as for ``compute_stats``), every rank returns every rank's rows, in rank order.
    """
    _need_images(source)
    options = _run_options(net, options, batch_size=batch_size, workers=workers, progress=progress)
    options = _join(options, distributed, source) if net is None else options
    net = net or FeatureNet(options=options, **net_kwargs)
    env = _rank_env(net.device) if _sharded(distributed, source) else dist_mod.SINGLE_PROCESS
    run = _run(source, net, True, logits, options, env)
    dims, classes = net.dims, net.num_classes
    feats = torch.cat(run.features) if run.features else torch.zeros(0, dims)
    lg = (torch.cat(run.logits) if run.logits else torch.zeros(0, classes)) if logits else None
    failures = run.failures
    if env.distributed:
        parts = dist_mod.gather_objects((feats, lg, failures), env)
        feats = torch.cat([f for f, _, _ in parts])
        lg = torch.cat([x for _, x, _ in parts]) if logits else None
        failures = [x for _, _, fs in parts for x in fs]
    return {"features": feats, "logits": lg, "failures": failures}


def compute_stats(source: Source, net: FeatureNet | None = None, batch_size: int | None = None,
                  workers: int | None = None, progress: bool | None = None, distributed: bool | None = None,
                  *, options: EngineOptions | None = None, **net_kwargs: Any) -> Stats:
    """Statistics of a folder / files / archive / tensor / iterator of batches, or read from an ``.npz``.

    Under torchrun (``distributed=None``: files and archives when torchrun started this process; ``True``
    also for tensors and iterators, each rank's own samples) each rank reads its block and the ranks'
    statistics merge in rank order (every rank returns the full statistics). Fewer than 2 usable images
    is an error (``fid`` also warns when there are fewer images than dims). ``net`` and ``options`` as
    for ``compute_features``.
    """
    if isinstance(source, Stats):
        return source
    if _is_stats_file(source):
        return _read_stats(source)
    count_images(source)      # a bad input is reported before the network loads
    options = _run_options(net, options, batch_size=batch_size, workers=workers, progress=progress)
    options = _join(options, distributed, source) if net is None else options
    net = net or FeatureNet(options=options, **net_kwargs)
    env = _rank_env(net.device) if _sharded(distributed, source) else dist_mod.SINGLE_PROCESS
    run = _run(source, net, False, False, options, env)
    acc = run.accumulator
    failures = run.failures
    if env.distributed:
        acc.all_reduce()
        failures = [x for part in dist_mod.gather_objects(failures, env) for x in part]
    label = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    if acc.n < 2:
        failed = f" ({len(failures)} failed to decode)" if failures else ""
        raise ValueError(f"{label}: {acc.n} usable image(s){failed}; statistics need at least 2 "
                         f"(and FID needs many: 50,000 is the usual count, at least {net.dims})")
    mu, sigma = acc.compute()
    meta = {**net.meta(), "failed": len(failures)}
    return Stats(mu, sigma, acc.n, meta, label)


def _warn_few(n: int | None, dims: int, label: str, out: list[str]) -> None:
    if n is not None and n < dims:
        msg = (f"{label}: {n} images for {dims}-d features: the covariance is singular and FID is biased "
               f"upwards; use at least {dims} images (papers use 50,000)")
        warnings.warn(msg, MetricWarning, stacklevel=3)
        out.append(msg)


def fid(a: Source, b: Source, *, weights: str | PathLike | nn.Module = "fid", mode: str | None = None,
        dims: int | None = None, device: str | None = None, batch_size: int | None = None,
        workers: int | None = None, legacy_sqrtm: bool = False, strict: bool = False,
        progress: bool | None = None, options: EngineOptions | None = None,
        distributed: bool | None = None) -> dict:
    """FID between two sources (folders, files, archives, ``.npz`` statistics, tensors, iterators of
    batches); ``distributed`` as for ``compute_stats``.

    ``mode`` and ``dims`` default to those of a statistics file among the inputs (so images are scored
    the way the reference statistics were made), else ``pytorch-fid`` and 2048. Returns {"fid",
    "method", "n", "dims", "diagnostics", "warnings", "meta"}; statistics made with other weights, taps or
    modes warn (or raise under ``strict``). ``options`` (default ``METRIC_OPTIONS``) say how the engine
    runs; ``device``, ``batch_size``, ``workers`` and ``progress`` replace single settings.
    """
    options = _run_options(None, options, device=device, batch_size=batch_size, workers=workers,
                           progress=progress)
    sa, sb = (_read_stats(x) if _is_stats_file(x) else x for x in (a, b))
    given_in = (sa, sb)
    given = [s for s in (sa, sb) if isinstance(s, Stats)]
    if mode is None:
        mode = next((s.meta["mode"] for s in given if s.meta.get("mode") in MODES), "pytorch-fid")
    if dims is None:
        dims = given[0].dims if given else 2048
    for x in (sa, sb):
        count_images(x)       # a bad input is reported before the network loads
    options = _join(options, distributed, *(x for x in (sa, sb) if not isinstance(x, Stats)))
    net = None if len(given) == 2 else FeatureNet(weights, mode, dims, options=options)
    _plan(net, sa, sb)
    sa = compute_stats(sa, net, distributed=distributed, options=options)
    sb = compute_stats(sb, net, distributed=distributed, options=options)
    out_warnings = list(check_compatible(sa, sb, strict))
    for s in (sa, sb):
        _warn_few(s.n, s.dims, s.source, out_warnings)
    arrays: list[Any] = [sa.mu, sa.sigma, sb.mu, sb.sigma]
    if net is not None and net.device.type != "cpu" and not legacy_sqrtm:
        arrays = [torch.from_numpy(x).to(net.device) for x in arrays]     # the eigh route runs there too
    res = fidmath.frechet_details(*arrays, method="sqrtm" if legacy_sqrtm else "eigh",
                                  labels=(sa.source, sb.source))
    # Images that failed to decode in this run (a statistics input's own count is history, not this run's).
    failed = [0 if isinstance(x, Stats) else int(s.meta.get("failed", 0))
              for x, s in zip(given_in, (sa, sb))]
    return {"fid": res.value, "method": res.method, "n": [sa.n, sb.n], "dims": sa.dims,
            "diagnostics": res.as_dict(), "warnings": out_warnings, "meta": [sa.meta, sb.meta],
            "failed": failed}


def kid(a: Source, b: Source, *, weights: str | PathLike | nn.Module = "fid", mode: str = "pytorch-fid",
        dims: int = 2048, device: str | None = None, batch_size: int | None = None, workers: int | None = None,
        subsets: int = 100, subset_size: int = 1000, seed: int = 2020, progress: bool | None = None,
        options: EngineOptions | None = None) -> dict:
    """KID (cubic polynomial kernel, ``subsets`` random subsets of ``subset_size``): mean and std."""
    options = _run_options(None, options, device=device, batch_size=batch_size, workers=workers,
                           progress=progress)
    _need_images(a, b)
    fidmath.check_kid_args([count_images(a), count_images(b)], subsets, subset_size)
    options = _join(options, None, a, b)
    net = FeatureNet(weights, mode, dims, options=options)
    _plan(net, a, b)
    fa = compute_features(a, net)
    fb = compute_features(b, net)
    f1, f2 = fa["features"].to(net.device), fb["features"].to(net.device)
    res = fidmath.kid(f1, f2, subsets, subset_size, seed)
    return {"kid": res.mean, "kid_std": res.std, "subsets": subsets, "subset_size": subset_size,
            "n": [len(fa["features"]), len(fb["features"])], "meta": net.meta(),
            "failed": len(fa["failures"]) + len(fb["failures"])}


def inception_score(a: Source, *, weights: str | PathLike | nn.Module = "fid",
                    mode: str = "pytorch-fid", device: str | None = None, batch_size: int | None = None,
                    workers: int | None = None, splits: int = 10, seed: int = 2020,
                    progress: bool | None = None, options: EngineOptions | None = None) -> dict:
    """Inception Score over ``splits`` splits: softmax over the net's logits without the fc bias."""
    options = _run_options(None, options, device=device, batch_size=batch_size, workers=workers,
                           progress=progress)
    _need_images(a)
    fidmath.check_is_args(count_images(a), splits)
    options = _join(options, None, a)
    net = FeatureNet(weights, mode, 2048, options=options)
    fa = compute_features(a, net, True)
    res = fidmath.inception_score(fa["logits"], splits, True, seed)
    return {"is": res.mean, "is_std": res.std, "splits": splits, "n": len(fa["logits"]),
            "logits": f"softmax over the {net.num_classes} logits without the fc bias (as the original "
                      f"Inception Score code and torch-fidelity)",
            "meta": net.meta(), "failed": len(fa["failures"])}


def precision_recall(generated: Source, real: Source, *, weights: str | PathLike | nn.Module = "fid",
                     mode: str = "pytorch-fid", dims: int = 2048, device: str | None = None,
                     batch_size: int | None = None, workers: int | None = None, k: int = 3,
                     progress: bool | None = None, options: EngineOptions | None = None) -> dict:
    """Improved precision/recall (Kynkäänniemi et al. 2019) on the same features as FID."""
    options = _run_options(None, options, device=device, batch_size=batch_size, workers=workers,
                           progress=progress)
    _need_images(generated, real)
    fidmath.check_knn_args([count_images(generated), count_images(real)], k)
    options = _join(options, None, generated, real)
    net = FeatureNet(weights, mode, dims, options=options)
    _plan(net, generated, real)
    fg = compute_features(generated, net)
    fr = compute_features(real, net)
    out = fidmath.precision_recall(fg["features"], fr["features"], k)
    return {**out, "n": [len(fg["features"]), len(fr["features"])], "meta": net.meta(),
            "failed": len(fg["failures"]) + len(fr["failures"])}
