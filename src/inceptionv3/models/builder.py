"""Networks by name: ``ARCHS``, ``build_model`` (from the constructor arguments saved in
``model.config``), ``FID_GRAPH`` (the configuration of the network FID is defined on, from ``configs``)
and ``min_input_size``."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .base import AUX_MIN_INPUT_SIZE, MIN_INPUT_SIZE
from .configs import FID_GRAPH
from .inception import inception_v3
from .mini import MINI_MIN_INPUT_SIZE, InceptionMini, inception_mini

__all__ = ["ARCHS", "FID_GRAPH", "build_model", "min_input_size"]

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "inception_v3": inception_v3,
    "inception_mini": inception_mini,
}


def build_model(arch: str, **config) -> nn.Module:
    """Build a network by name with its constructor arguments (as saved in ``model.config``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if arch == "inception_mini":
        # Options that only InceptionV3 has are meaningless here; refuse rather than ignore them silently.
        extra = {k for k in config if k not in ("num_classes", "dropout", "in_chans")}
        if config.get("aux_logits") is False:
            extra.discard("aux_logits")
        if extra:
            raise ValueError(f"inception_mini does not take {sorted(extra)}")
        config = {k: v for k, v in config.items() if k != "aux_logits"}
    return ARCHS[arch](**config)


def min_input_size(model: nn.Module, with_aux: bool = False) -> int:
    """Smallest image side this model accepts."""
    if isinstance(model, InceptionMini):
        return MINI_MIN_INPUT_SIZE
    return AUX_MIN_INPUT_SIZE if with_aux else MIN_INPUT_SIZE
