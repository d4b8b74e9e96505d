"""`ModelEma`: an exponential moving average of the weights, evaluated and saved as best when
`--ema-decay` is set, and checkpointed with the run.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .resume import model_state_dict


class ModelEma:
    """Exponential moving average of a network's weights and BN statistics, evaluated and saved as best.

    The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates, so that short runs (and the
    first steps of long ones) are not dominated by the random initialisation.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, v in zip(self.module.state_dict().values(), net.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(v, 1.0 - d)
            else:
                e.copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": model_state_dict(self.module)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.decay, self.updates = state["decay"], state["updates"]
