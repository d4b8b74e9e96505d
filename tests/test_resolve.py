"""The "auto" precision choice on shared cores: when it times fp32 against bf16, how it decides, and that
the engine and training apply its decision (timing itself is replaced by a fake clock or a fixed answer,
so nothing here depends on how busy the machine is)."""
from __future__ import annotations

import pytest
import torch

from inceptionv3 import build_model
from inceptionv3.engine import engine as engine_mod
from inceptionv3.engine import resolve
from inceptionv3.training import loop
from inceptionv3.training.config import TrainConfig


class FakeClock:
    """A clock that each run(candidate) advances by that candidate's cost."""

    def __init__(self, costs: dict[str, list[float]]) -> None:
        self.now, self.costs, self.calls = 0.0, {k: list(v) for k, v in costs.items()}, []

    def __call__(self) -> float:
        return self.now

    def run(self, candidate: str) -> None:
        self.calls.append(candidate)
        self.now += self.costs[candidate].pop(0)


def test_time_alternating_warms_up_then_alternates_and_takes_medians():
    clock = FakeClock({"a": [9.0, 1.0, 3.0, 2.0], "b": [9.0, 5.0, 4.0, 6.0]})
    times = resolve.time_alternating(clock.run, ("a", "b"), rounds=3, clock=clock)
    assert clock.calls == ["a", "b", "a", "b", "b", "a", "a", "b"]   # warm-ups untimed, order alternates
    assert times == {"a": 2.0, "b": 5.0}


@pytest.mark.parametrize("static_s, other_s, expected", [
    (1.00, 0.50, "other"),    # clearly faster: switch
    (1.00, 0.97, "static"),   # within the margin: timing noise changes nothing
    (1.00, 2.00, "static"),
])
def test_faster_keeps_the_static_choice_unless_clearly_beaten(static_s, other_s, expected):
    clock = FakeClock({"static": [0.0] + [static_s] * 2, "other": [0.0] + [other_s] * 2})
    assert resolve.faster(clock.run, "static", "other", "test", rounds=2, clock=clock) == expected


def test_worth_timing_only_on_multithreaded_cpus_outside_torchrun(monkeypatch):
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": True)
    assert resolve.worth_timing("cpu", 2)
    assert not resolve.worth_timing("cpu", 1)                     # no barriers to wait at
    assert not resolve.worth_timing("cpu", 2, distributed=True)   # ranks must agree
    assert not resolve.worth_timing("meta", 2)
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": False)
    assert not resolve.worth_timing("cpu", 4)                     # no choice to make


def _auto_engine(monkeypatch, answer: str, images: int):
    monkeypatch.setattr(engine_mod, "worth_timing", lambda *a: True)
    monkeypatch.setattr(engine_mod, "resolve_engine", lambda *a: ("bf16", "torch"))   # as on a bf16 CPU
    asked = []
    monkeypatch.setattr(engine_mod, "faster", lambda run, static, other, what, rounds=2: (
        asked.append((static, other)), run(static), run(other), answer)[-1])
    torch.manual_seed(0)
    model = build_model("inception_mini", num_classes=4).eval()
    return model, engine_mod.build_engine(model, "logits", precision="auto", backend="torch", images=images), asked


def test_engine_auto_switches_to_fp32_when_timing_says_so(monkeypatch):
    model, engine, asked = _auto_engine(monkeypatch, "fp32", images=engine_mod.PROBE_MIN_IMAGES)
    x = torch.rand(3, 3, 75, 75)
    out = engine(x)
    assert asked == [("bf16", "fp32")] and engine.precision == "fp32" and engine.fp32_alternative is None
    engine(x)
    assert len(asked) == 1                                   # decided once
    monkeypatch.undo()
    exact = engine_mod.build_engine(model, "logits", precision="fp32", backend="torch")(x)
    torch.testing.assert_close(out, exact, rtol=0, atol=0)   # every row from the one fp32 graph


def test_engine_auto_keeps_bf16_and_small_jobs_are_not_timed(monkeypatch):
    _, engine, asked = _auto_engine(monkeypatch, "bf16", images=engine_mod.PROBE_MIN_IMAGES)
    engine(torch.rand(2, 3, 75, 75))
    assert engine.precision == "bf16" and asked
    _, small, asked = _auto_engine(monkeypatch, "fp32", images=8)
    small(torch.rand(2, 3, 75, 75))
    assert small.precision == "bf16" and not asked


def test_amp_auto_times_a_copy_and_leaves_the_network_untouched(monkeypatch):
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": True)
    monkeypatch.setattr(resolve, "worth_timing", lambda *a: True)
    runs = []
    monkeypatch.setattr(resolve, "faster", lambda run, static, other, what, rounds=2: (
        run(static), run(other), runs.append(what), "off")[-1])
    torch.manual_seed(0)
    net = build_model("inception_mini", num_classes=3).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(data="digits", arch="inception_mini", image_size=75, batch_size=4)
    cpu = torch.device("cpu")
    assert loop.resolve_amp("auto", cpu, net, cfg, steps=loop.AMP_TIMING_MIN_STEPS) == "off"
    assert runs == ["--amp"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # BN statistics included
    assert all(p.grad is None for p in net.parameters())
    # a short run, or no network to time, keeps the static rule; an explicit choice is never timed
    assert loop.resolve_amp("auto", cpu, net, cfg, steps=loop.AMP_TIMING_MIN_STEPS - 1) == "bf16"
    assert loop.resolve_amp("auto", cpu) == "bf16"
    assert loop.resolve_amp("off", cpu, net, cfg, steps=1000) == "off"
    assert runs == ["--amp"]
