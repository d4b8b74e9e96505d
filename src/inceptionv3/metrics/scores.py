"""Several metrics from one pass over each image set: FID, sFID, KID, the Inception Score and
precision/recall/density/coverage.

Each set's features (and the logits, when the Inception Score is asked for) are computed once, by
``pipeline.compute_features``, and every metric is computed from them; the Fréchet distance goes through
``pipeline.fid`` on the statistics of those features, so it is the number ``inceptionv3 fid`` prints.
sFID reads another tap (``modes.SFID_TAP``), so it costs a second pass that stops at Mixed_6d. The first
set is the generated one: the Inception Score is its own, precision is the share of it near the second.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.options import EngineOptions, PathLike
from . import functional as fidmath
from .featurenet import FeatureNet
from .modes import METRIC_OPTIONS, METRICS, MODES, NEED_IMAGES, SFID_DIMS
from .pipeline import Source, compute_features, compute_stats, count_images, fid
from .stats import Stats, StatsAccumulator, has_spatial, holds_statistics, load_stats

log = logging.getLogger(__name__)

def _is_stats(source: Any) -> bool:
    return isinstance(source, Stats) or (isinstance(source, (str, os.PathLike)) and str(source).endswith(".npz")
                                         and Path(source).is_file() and holds_statistics(source))


def _label(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def _stats_of(features: torch.Tensor, net: FeatureNet, failed: int, label: str) -> Stats:
    if features.shape[0] < 2:
        raise ValueError(f"{label}: {features.shape[0]} usable image(s) ({failed} failed to decode); "
                         f"statistics need at least 2")
    acc = StatsAccumulator(net.dims)
    acc.update(features)
    mu, sigma = acc.compute()
    return Stats(mu, sigma, acc.n, {**net.meta(), "failed": failed}, label)


def score(a: Source, b: Source, metrics: Sequence[str] = ("fid",), *,
          weights: str | PathLike | nn.Module = "fid", mode: str | None = None, dims: int | None = None,
          options: EngineOptions | None = None, legacy_sqrtm: bool = False, strict: bool = False,
          kid_subsets: int = 100, kid_subset_size: int = 1000, splits: int = 10, k: int = 5,
          seed: int = 2020) -> dict:
    """``metrics`` (names from ``METRICS``) of generated set ``a`` against reference set ``b``, with one
    feature pass per set (plus one for sFID). Statistics files serve FID and sFID (ADM's and ours with
    ``mu_s``/``sigma_s``); KID, IS and PRDC need images. Every setting is checked against the image
    counts before any compute. Returns {metric values..., "n", "dims", "mode", "failed", "warnings",
    "meta"}.
    """
    metrics = tuple(m for m in METRICS if m in metrics)
    if not metrics:
        raise ValueError(f"no metrics asked for; choose from {', '.join(METRICS)}")
    options = options or METRIC_OPTIONS
    stats_in = [_is_stats(x) for x in (a, b)]
    for source, is_stats in zip((a, b), stats_in):
        wanted = [m for m in metrics if m in NEED_IMAGES]
        if is_stats and wanted:
            raise ValueError(f"{_label(source)}: {', '.join(wanted)} need the images themselves; a statistics "
                             f"file only holds their mean and covariance (FID and sFID work from it)")
    for source, is_stats in zip((a, b), stats_in):
        if "sfid" in metrics and is_stats and not isinstance(source, Stats) and not has_spatial(source):
            raise ValueError(f"{source}: holds no sFID statistics (mu_s, sigma_s); write them with "
                             f"'inceptionv3 stats --sfid', or score sFID from the images")
    counts = [count_images(x) for x in (a, b)]
    if "kid" in metrics:
        fidmath.check_kid_args(counts, kid_subsets, kid_subset_size)
    if "is" in metrics:
        fidmath.check_is_args(counts[0], splits)
    if "prdc" in metrics:
        fidmath.check_knn_args(counts, k)
    given = [load_stats(x) if isinstance(x, (str, os.PathLike)) else x
             for x, s in zip((a, b), stats_in) if s]
    if mode is None:
        mode = next((s.meta["mode"] for s in given if s.meta.get("mode") in MODES), "pytorch-fid")
    if dims is None:
        dims = given[0].dims if given else 2048

    out: dict[str, Any] = {"mode": mode, "dims": dims}
    warnings_out: list[str] = []
    net = None if all(stats_in) else FeatureNet(weights, mode, dims, options=options)
    if net is not None:
        net.plan(sum(c or 0 for c in counts))
    feats: list[dict | None] = [None, None]
    failed = [0, 0]
    stats: list[Stats] = []
    for i, (source, is_stats) in enumerate(zip((a, b), stats_in)):
        if is_stats:
            stats.append(source if isinstance(source, Stats) else load_stats(source))
            continue
        f = compute_features(source, net, logits="is" in metrics and i == 0, options=options)
        feats[i], failed[i] = f, len(f["failures"])
        stats.append(_stats_of(f["features"], net, failed[i], _label(source)))
    out["n"] = [s.n for s in stats]

    if "fid" in metrics:
        r = fid(stats[0], stats[1], legacy_sqrtm=legacy_sqrtm, strict=strict, options=options)
        out.update(fid=r["fid"], method=r["method"], diagnostics=r["diagnostics"])
        warnings_out += r["warnings"]
    if "sfid" in metrics:
        out["sfid"] = _sfid(a, b, stats_in, weights, mode, options, legacy_sqrtm, strict, warnings_out)
    if "kid" in metrics:
        res = fidmath.kid(feats[0]["features"], feats[1]["features"], kid_subsets, kid_subset_size, seed)
        out.update(kid=res.mean, kid_std=res.std, subsets=kid_subsets, subset_size=kid_subset_size)
    if "is" in metrics:
        res = fidmath.inception_score(feats[0]["logits"], splits, True, seed)
        out.update({"is": res.mean, "is_std": res.std, "splits": splits})
    if "prdc" in metrics:
        out.update(fidmath.prdc(feats[0]["features"], feats[1]["features"], k))
    out.update(failed=failed, warnings=list(dict.fromkeys(warnings_out)), meta=[s.meta for s in stats])
    return out


def _sfid(a: Source, b: Source, stats_in: list[bool], weights: str | PathLike | nn.Module, mode: str,
          options: EngineOptions, legacy_sqrtm: bool, strict: bool, warnings_out: list[str]) -> float:
    """sFID: the Fréchet distance of the 2,023 spatial features (a second pass, or a file's mu_s/sigma_s)."""
    net = None if all(stats_in) else FeatureNet(weights, mode, SFID_DIMS, options=options)
    spatial = []
    for source, is_stats in zip((a, b), stats_in):
        if not is_stats:
            spatial.append(compute_stats(source, net, options=options))
        elif isinstance(source, Stats):
            spatial.append(_need_spatial(source))
        else:
            spatial.append(load_stats(source, spatial=True))
    r = fid(spatial[0], spatial[1], legacy_sqrtm=legacy_sqrtm, strict=strict, options=options)
    warnings_out += r["warnings"]
    return r["fid"]


def _need_spatial(s: Stats) -> Stats:
    if s.dims != SFID_DIMS:
        raise ValueError(f"{s.source or 'statistics'}: {s.dims}-d statistics; sFID needs the {SFID_DIMS}-d "
                         f"spatial ones (a file with mu_s and sigma_s, or the images)")
    return s
