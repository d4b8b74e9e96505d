"""Generator metrics: FID, sFID, KID, Inception Score, precision/recall/density/coverage, over images,
tensors or statistics.

``functional`` holds the math (arrays in, numbers out); ``pipeline`` runs images through the engine and
accumulates statistics; ``stats`` reads and writes them. The names below resolve on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_API = {
    "DIMS": "modes", "MODES": "modes", "METRIC_OPTIONS": "modes",
    "FID_NET_CONFIG": "featurenet", "FeatureNet": "featurenet", "load_metric_model": "featurenet",
    "ImageTransform": "preprocess", "prepare": "preprocess",
    "Stats": "stats", "StatsAccumulator": "stats", "StatsMismatchError": "stats", "check_compatible": "stats",
    "load_stats": "stats", "save_stats": "stats", "STATS_FORMAT": "stats", "INPUT_SIZE": "preprocess",
    "compute_features": "pipeline", "compute_stats": "pipeline", "fid": "pipeline", "kid": "pipeline",
    "inception_score": "pipeline", "precision_recall": "pipeline", "count_images": "pipeline",
    "score": "scores", "METRICS": "modes", "SFID_DIMS": "modes", "describe": "stats",
    "MetricWarning": "functional",
}
__all__ = list(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)

if TYPE_CHECKING:
    from .featurenet import FID_NET_CONFIG, FeatureNet, load_metric_model
    from .functional import MetricWarning
    from .modes import DIMS, METRIC_OPTIONS, METRICS, MODES, SFID_DIMS
    from .pipeline import (
        compute_features,
        compute_stats,
        count_images,
        fid,
        inception_score,
        kid,
        precision_recall,
    )
    from .preprocess import INPUT_SIZE, ImageTransform, prepare
    from .scores import score
    from .stats import (
        STATS_FORMAT,
        Stats,
        StatsAccumulator,
        StatsMismatchError,
        check_compatible,
        describe,
        load_stats,
        save_stats,
    )
