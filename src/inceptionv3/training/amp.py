"""The precision of each training step (`--amp`): the static rule, the autocast it gives, and `AmpChoice`,
which lets `--amp auto` decide from the run's own first steps.

bf16 being native does not make it the faster choice: on shared cores a 2-thread kernel waits at every
barrier for the thread whose core another process holds, and bf16's many short parallel regions lose
more there than fp32 (docs/performance.md). So where there is a choice, the first steps of the run
alternate between bf16 autocast and fp32 in `resolve.alternating_order`, the first of each untimed
(kernel selection, the optimizer's state), and the rest of the run takes the faster (`resolve.choose`).
Those are real steps of the run: nothing is computed only to be timed, so every run length can afford it.
"""
from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine import resolve
from ..runtime import distributed as dist_mod
from ..runtime.distributed import DistEnv

logger = logging.getLogger(__name__)

# The static choice first: where timing cannot tell them apart by more than the margin, it stays.
TRIAL = ("bf16", "off")
TRIAL_ROUNDS = 3   # timed steps of each; the median keeps one disturbed step from deciding
TRIAL_ORDER = tuple(resolve.alternating_order(TRIAL, TRIAL_ROUNDS))
TIMING = "+".join(TRIAL)   # what an epoch record says of a precision not yet decided


def resolve_amp(amp: str, device: torch.device) -> str:
    """The static rule: `--amp auto` -> "bf16" where the device has native bf16, else "off"; other values
    as given. bf16 keeps fp32's exponent range, so it needs no loss scaling; on the digits it reaches
    fp32's accuracy target (docs/performance.md). fp16 is never chosen automatically."""
    if amp != "auto":
        return amp
    return "bf16" if resolve.native_bf16(device) else "off"   # the one detection `--precision auto` uses


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """The training forward's autocast for `--amp` (disabled for "off" and where "auto" means fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_amp(amp, device))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass
class AmpChoice:
    """Which precision each step runs: `amp` once decided (off, bf16 or fp16), None while the run's first
    steps are timing `TRIAL` in `TRIAL_ORDER`; `seconds` holds each one's step times so far. Saved in
    checkpoints (`to_dict`), so a resumed run keeps the decision, or continues the timing where it was."""

    amp: str | None
    seconds: dict[str, list[float]] = field(default_factory=dict)
    timed_ms: dict[str, float] | None = None   # the medians that decided

    @property
    def steps(self) -> int:
        return sum(len(v) for v in self.seconds.values())

    @property
    def current(self) -> str:
        """The precision of the next step."""
        return self.amp if self.amp is not None else TRIAL_ORDER[self.steps]

    @property
    def label(self) -> str:
        """The precision as an epoch record and the log say it: the decision, or bf16+off while timing."""
        return self.amp if self.amp is not None else TIMING

    def observe(self, seconds: float, env: DistEnv, device: torch.device) -> None:
        """Count one step of `current` that took `seconds`; after the last of `TRIAL_ORDER`, decide. Under
        torchrun every rank runs the same order and the decision is taken on the mean of the ranks'
        medians, so all of them take the same one."""
        if self.amp is not None:
            return
        self.seconds.setdefault(self.current, []).append(seconds)
        if self.steps < len(TRIAL_ORDER):
            return
        medians = [statistics.median(self.seconds[c][1:]) for c in TRIAL]   # the first of each warms up
        summed = dist_mod.all_reduce(medians, env, device)
        times = {c: t / env.world_size for c, t in zip(TRIAL, summed)}   # the ranks' mean
        self.amp = resolve.choose(times, TRIAL[0], TRIAL[1], "--amp")
        self.timed_ms = {c: round(1000 * t, 1) for c, t in times.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AmpChoice:
        return cls(d["amp"], {k: list(v) for k, v in d.get("seconds", {}).items()}, d.get("timed_ms"))


def amp_choice(amp: str, device: torch.device, env: DistEnv, timeable: bool = True) -> AmpChoice:
    """`--amp` as the run's `AmpChoice`: timed where "auto" has a real choice (native bf16 on a CPU with
    several compute threads) and the run's steps can be timed (`timeable`: not a cached linear probe's
    tiny head, not a compiled model, which would compile twice); else the static rule. Explicit values
    are never timed. Under torchrun the ranks agree on whether to time."""
    static = resolve_amp(amp, device)
    if amp != "auto" or static != "bf16" or not timeable:
        return AmpChoice(static)
    worth = resolve.worth_timing(device, torch.get_num_threads())
    (anywhere_not,) = dist_mod.all_reduce([float(not worth)], env, device, op="max")
    return AmpChoice(static) if anywhere_not else AmpChoice(None)
