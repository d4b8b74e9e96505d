"""InceptionV3 as faithful, fast, dependable software: classify, extract features, train, evaluate, score.

The public names resolve on first use (module ``__getattr__``), so ``import inceptionv3`` and
``inceptionv3 --help`` load neither torch nor torchvision until something needs them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it ("" for a sub-package exported as it is)
_API = {
    "ARCHS": "models.builder", "build_model": "models.builder",
    "TAPS": "models.taps",
    "InceptionV3": "models.inception", "inception_v3": "models.inception",
    "InceptionMini": "models.mini", "inception_mini": "models.mini",
    "summarize": "models.summary",
    "REGISTRY": "weights.registry", "WeightsError": "weights.errors",
    "load_model": "weights.load", "load_weights": "weights.load", "save_model": "weights.io",
    "Preprocess": "weights.preprocess", "load_image": "data.decode",
    "predict": "tasks.predict", "extract_features": "tasks.features", "save_features": "tasks.features",
    "evaluate": "tasks.evaluate", "explain": "tasks.explain", "EngineOptions": "engine.options",
    "TrainConfig": "training.config", "train": "training.run",
    "metrics": "",
}
__all__ = ["__version__", *_API]  # noqa: PLE0604 (the keys of _API are the names)
__getattr__, __dir__ = lazy_exports(__name__, _API)

if TYPE_CHECKING:   # what static tools see; at run time the names above resolve lazily
    from . import metrics
    from .data.decode import load_image
    from .engine.options import EngineOptions
    from .models.builder import ARCHS, build_model
    from .models.inception import InceptionV3, inception_v3
    from .models.mini import InceptionMini, inception_mini
    from .models.summary import summarize
    from .models.taps import TAPS
    from .tasks.evaluate import evaluate
    from .tasks.explain import explain
    from .tasks.features import extract_features, save_features
    from .tasks.predict import predict
    from .training.config import TrainConfig
    from .training.run import train
    from .weights.errors import WeightsError
    from .weights.io import save_model
    from .weights.load import load_model, load_weights
    from .weights.preprocess import Preprocess
    from .weights.registry import REGISTRY
