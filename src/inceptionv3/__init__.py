"""InceptionV3 as faithful, fast, dependable software: classify, extract features, train, evaluate, score."""
from __future__ import annotations

__version__ = "0.1.0"

import os

# OpenMP threads that spin while they wait take the time slice their partner needs whenever another
# process shares the cores. A short spin before sleeping kept the quiet-machine speed and most of the
# gain of never spinning under load (README, Precision and backends). The setting is read once, when
# torch loads, so it is made before that; a wait policy or spin count the user exported wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

# Functions are imported by name here, after their modules, so `inceptionv3.predict` is always the
# function even though a module of the same name exists (a lazy import would let the module win).
from .model import (  # noqa: E402
    ARCHS, TAPS, InceptionMini, InceptionV3, build_model, inception_mini, inception_v3,
)
from .weights import REGISTRY, WeightsError, load_model, load_weights, save_model  # noqa: E402
from .transforms import Preprocess, load_image  # noqa: E402
from .predict import predict  # noqa: E402
from .features import extract_features, save_features  # noqa: E402
from .info import summarize  # noqa: E402
from .train import TrainConfig, train  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from . import metrics  # noqa: E402

__all__ = [
    "__version__", "ARCHS", "TAPS", "InceptionV3", "InceptionMini", "build_model", "inception_v3",
    "inception_mini", "REGISTRY", "WeightsError", "load_model", "load_weights", "save_model", "Preprocess",
    "load_image", "predict", "extract_features", "save_features", "summarize", "TrainConfig", "train",
    "evaluate", "metrics",
]
