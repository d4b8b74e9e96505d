"""What resuming needs besides the checkpoint file: the configuration it continues with (the saved one,
with what may change), the check that the resumed run computes what the saved one did, every random
generator's state (captured and restored per rank), and CPU state dicts.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

# Fields a resumed run may change: where and how it runs, not what it computes; and more epochs (the
# schedule is then that of a run of the new length).
RESUME_MAY_CHANGE = ("out", "resume", "overwrite", "epochs", "workers", "threads", "device", "save_every",
                     "save_minutes", "keep_last", "deterministic", "skip_nonfinite", "grad_checkpointing",
                     "compile", "compile_backend", "cache_features")


def _refuse_changes(run: str | Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """ValueError naming every flag in `now` that differs from `saved` and may not change on resume."""
    diff = [f"--{k.replace('_', '-')} (the run has {saved[k]!r}, given {now[k]!r})"
            for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if diff:
        raise ValueError(f"--resume {run}: {', '.join(diff)} cannot change on resume, since it changes what "
                         "the run computes; leave it out to keep the run's value, or start a new run in "
                         "another --out")


def resumed_config(run: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The configuration `--resume RUN` continues with: the run's config.json, with the fields in `given`
    (the flags on the command line), each of which must be one a resumed run may change or equal the
    run's value."""
    if given.get("overwrite"):
        TrainConfig(data="-", resume=str(run), overwrite=True)   # the one message for that conflict
    path = Path(run) / "config.json"
    if not path.is_file():
        raise ValueError(f"--resume {run}: no config.json there, so no run to continue; start the run "
                         "without --resume")
    try:
        saved = TrainConfig.load(path).to_dict()
    except (ValueError, TypeError) as e:   # JSON errors are ValueErrors without the file's name
        raise ValueError(f"{path}: not a run's configuration ({e}); start the run again with --overwrite") \
            from None
    _refuse_changes(run, saved, given)
    return TrainConfig.from_dict({**saved, **given, "resume": str(run), "out": str(run), "overwrite": False})


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A resumed run must compute what the saved run computed; names every field that differs."""
    _refuse_changes(cfg.resume, saved, cfg.to_dict())


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
