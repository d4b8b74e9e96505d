"""What resuming needs besides the checkpoint file: the check that the resumed run computes what the
saved one did, every random generator's state (captured and restored per rank), and CPU state dicts.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

# Fields a resumed run may change: where and how it runs, not what it computes.
RESUME_MAY_CHANGE = ("out", "resume", "workers", "threads", "device", "save_every", "save_minutes",
                     "keep_last", "deterministic", "skip_nonfinite", "grad_checkpointing", "compile",
                     "compile_backend", "cache_features")


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A resumed run must compute what the saved run computed; list every field that differs."""
    now = cfg.to_dict()
    diff = [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {now[k]!r})"
            for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if diff:
        raise ValueError(f"--resume {cfg.resume}: that run was started with other settings: "
                         f"{'; '.join(diff)}. "
                         f"Resume with the run's own flags (its config.json), or start a new run in "
                         "another --out folder")


def rng_state() -> dict[str, Any]:
    """This process's random generators (torch CPU and CUDA, numpy, random), checkpoint-friendly."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
