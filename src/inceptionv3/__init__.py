"""InceptionV3 as faithful, fast, dependable software: classify, extract features, train, evaluate."""
from __future__ import annotations

__version__ = "0.1.0"

from .model import (  # noqa: E402
    ARCHS, TAPS, InceptionMini, InceptionV3, build_model, inception_mini, inception_v3,
)

__all__ = [
    "__version__", "ARCHS", "TAPS", "InceptionV3", "InceptionMini", "build_model", "inception_v3",
    "inception_mini", "load_weights", "load_model", "save_model", "predict", "extract_features",
    "save_features", "summarize", "train", "TrainConfig", "evaluate",
]


def __getattr__(name: str):
    # The rest of the API loads on first use, so `import inceptionv3` stays light.
    lazy = {
        "load_weights": "weights", "load_model": "weights", "save_model": "weights", "REGISTRY": "weights",
        "predict": "predict", "extract_features": "features", "save_features": "features",
        "summarize": "info", "train": "train", "TrainConfig": "train", "evaluate": "evaluate",
    }
    if name in lazy:
        import importlib
        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(f"module 'inceptionv3' has no attribute {name!r}")
