"""The "auto" precision choice on shared cores: when it times fp32 against bf16, how it decides, and that
the engine and training apply its decision (timing itself is replaced by a fake clock or a fixed answer,
so nothing here depends on how busy the machine is)."""
from __future__ import annotations

import json

import pytest
import torch

from inceptionv3 import build_model
from inceptionv3.engine import engine as engine_mod
from inceptionv3.engine import resolve
from inceptionv3.runtime import distributed as dist_mod
from inceptionv3.training import amp, loop
from inceptionv3.training.config import TrainConfig

CPU = torch.device("cpu")


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


def _auto_engine(monkeypatch, answer: str, images: int, output: str = "logits"):
    monkeypatch.setattr(engine_mod, "worth_timing", lambda *a: True)
    monkeypatch.setattr(engine_mod, "resolve_engine", lambda *a: ("bf16", "torch"))   # as on a bf16 CPU
    asked = []
    monkeypatch.setattr(engine_mod, "faster", lambda run, static, other, what, rounds=2: (
        asked.append((static, other)), run(static), run(other), answer)[-1])
    torch.manual_seed(0)
    model = build_model("inception_mini", num_classes=4).eval()
    return model, engine_mod.build_engine(model, output, precision="auto", backend="torch", images=images), asked


def test_engine_auto_switches_to_fp32_when_timing_says_so(monkeypatch):
    model, engine, asked = _auto_engine(monkeypatch, "fp32", images=engine_mod.PROBE_MIN_IMAGES)
    x = torch.rand(3, 3, 75, 75)
    out = engine(x)
    assert asked == [("bf16", "fp32")] and engine.precision == "fp32" and engine.fp32_alternative is None
    engine(x)
    assert len(asked) == 1                                   # decided once
    monkeypatch.undo()
    exact = engine_mod.build_engine(model, "logits", precision="fp32", backend="torch")(x)
    # every row from the one fp32 graph, to the rounding of the batch it ran in (a linear layer's kernel
    # blocks over the batch)
    torch.testing.assert_close(out, exact, rtol=1e-6, atol=1e-6)


def test_engine_auto_keeps_bf16_and_small_jobs_are_not_timed(monkeypatch):
    _, engine, asked = _auto_engine(monkeypatch, "bf16", images=engine_mod.PROBE_MIN_IMAGES)
    engine(torch.rand(2, 3, 75, 75))
    assert engine.precision == "bf16" and asked
    _, small, asked = _auto_engine(monkeypatch, "fp32", images=8)
    small(torch.rand(2, 3, 75, 75))
    assert small.precision == "bf16" and not asked


@pytest.mark.parametrize("winner", ["bf16", "fp32"])
def test_engine_auto_keeps_the_timed_rows_of_the_winner(monkeypatch, winner):
    """The probe's calls run rows of the batch; the winner's rows are the output and only the loser's rows
    run again, so timing costs the loser's calls and the output is the winner's for every row."""
    import functools
    costs = {winner: 1.0, ("fp32" if winner == "bf16" else "bf16"): 2.0}
    clock, rows = FakeClock({}), {"bf16": 0, "fp32": 0}
    real_run = engine_mod.Engine._run_torch

    def counted(self, head, precision, images):
        rows[precision] += len(images)
        clock.now += costs[precision]
        return real_run(self, head, precision, images)

    _, engine, _ = _auto_engine(monkeypatch, winner, images=engine_mod.PROBE_MIN_IMAGES, output="pool")
    monkeypatch.setattr(engine_mod, "faster", functools.partial(resolve.faster, clock=clock))
    monkeypatch.setattr(engine_mod.Engine, "_run_torch", counted)
    # rows of clearly different brightness: their features differ by more than bf16's rounding, so a row
    # put in the wrong place fails the comparison below
    x = torch.rand(10, 3, 75, 75) * torch.linspace(0.1, 3.0, 10).view(-1, 1, 1, 1)
    out = engine(x)
    k = engine_mod.PROBE_IMAGES
    loser = "fp32" if winner == "bf16" else "bf16"
    assert engine.precision == winner and rows == {winner: len(x), loser: 2 * k}
    whole = real_run(engine, engine.head, winner, x)
    tol = 1e-6 if winner == "fp32" else 1e-3   # the rounding of the batch a row ran in
    torch.testing.assert_close(out, whole, rtol=0, atol=tol)   # every row as the winner runs the batch


class _Steps:
    """Fake step times: each precision's steps take these seconds, the first of each (a warm-up) 9 s."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.seen = seconds, set()

    def take(self, choice: amp.AmpChoice) -> None:
        now = choice.current
        choice.observe(self.seconds[now] if now in self.seen else 9.0, dist_mod.SINGLE_PROCESS, CPU)
        self.seen.add(now)


@pytest.mark.parametrize("bf16_s, off_s, expected", [(1.0, 0.5, "off"), (1.0, 0.98, "bf16"), (0.5, 1.0, "bf16")])
def test_amp_choice_alternates_skips_warm_ups_then_keeps_the_faster(bf16_s, off_s, expected):
    choice, steps = amp.AmpChoice(None), _Steps({"bf16": bf16_s, "off": off_s})
    order = []
    while choice.amp is None:
        order.append(choice.current)
        steps.take(choice)
    # one warm-up each, then 3 rounds in alternating order; the margin keeps bf16 on a near tie
    assert order == ["bf16", "off", "bf16", "off", "off", "bf16", "bf16", "off"] == list(amp.TRIAL_ORDER)
    assert choice.amp == expected and choice.label == expected
    assert choice.timed_ms == {"bf16": 1000 * bf16_s, "off": 1000 * off_s}   # warm-ups left out
    again = amp.AmpChoice.from_dict(choice.to_dict())
    assert again == choice and again.current == expected
    steps.take(again)
    assert again.steps == len(amp.TRIAL_ORDER)   # decided: nothing more is timed


def test_amp_choice_times_only_where_auto_has_a_choice(monkeypatch):
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": True)
    monkeypatch.setattr(resolve, "worth_timing", lambda *a: True)
    env = dist_mod.SINGLE_PROCESS
    assert amp.amp_choice("auto", CPU, env).amp is None                        # timing
    assert amp.amp_choice("auto", CPU, env, timeable=False).amp == "bf16"      # probe head, --compile
    assert amp.amp_choice("bf16", CPU, env).amp == "bf16"                      # explicit: never timed
    assert amp.amp_choice("off", CPU, env).amp == "off"
    monkeypatch.setattr(resolve, "worth_timing", lambda *a: False)           # one thread, GPUs
    assert amp.amp_choice("auto", CPU, env).amp == "bf16"
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": False)
    monkeypatch.setattr(resolve, "worth_timing", lambda *a: True)
    assert amp.amp_choice("auto", CPU, env).amp == "off"                       # no bf16 to try
    assert str(len(amp.TRIAL_ORDER)) in TrainConfig.__dataclass_fields__["amp"].metadata["help"]


@pytest.fixture
def timed_auto(monkeypatch):
    """`--amp auto` with a choice to make (as on a multi-threaded CPU with native bf16): every training
    step's precision is recorded, and the timing decides fp32."""
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": True)
    monkeypatch.setattr(resolve, "worth_timing", lambda *a: True)
    steps, decisions = [], []
    real = loop.autocast

    def recording(device, precision):
        steps.append(precision)
        return real(device, precision)

    monkeypatch.setattr(loop, "autocast", recording)
    monkeypatch.setattr(resolve, "choose", lambda times, static, other, what: (decisions.append(times), "off")[-1])
    return steps, decisions


def _train(out, *flags: str) -> int:
    from inceptionv3.cli.main import main

    # 40 digits in batches of 8: 5 steps an epoch, so the 8 timed steps end in epoch 2
    return main(["train", "digits", "--arch", "inception_mini", "--image-size", "32", "--batch-size", "8",
                 "--limit", "40", "--workers", "0", "--threads", "1", "--no-progress", "--out", str(out), *flags])


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_amp_auto_decides_in_the_runs_own_steps_and_resume_keeps_it(tmp_path, timed_auto):
    steps, decisions = timed_auto
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1") == 0
    assert steps == list(amp.TRIAL_ORDER[:5])
    assert [r["amp"] for r in _records(out)] == ["bf16+off"] and not decisions   # still timing
    # resumed at the epoch's end: the timing goes on where it was, then the run takes the faster
    assert _train(out, "--epochs", "2", "--resume", str(out)) == 0
    assert steps == list(amp.TRIAL_ORDER) + ["off"] * 2 and len(decisions) == 1
    second = _records(out)[1]
    assert second["amp"] == "off" and set(second["amp_ms"]) == {"bf16", "off"}
    # decided: a resumed run keeps the decision and times nothing
    assert _train(out, "--epochs", "3", "--resume", str(out)) == 0
    assert steps[10:] == ["off"] * 5 and len(decisions) == 1
    assert [r["amp"] for r in _records(out)] == ["bf16+off", "off", "off"]
    assert "amp_ms" not in _records(out)[2]


def test_amp_explicit_is_never_timed(tmp_path, timed_auto):
    steps, decisions = timed_auto
    assert _train(tmp_path / "run", "--epochs", "1", "--amp", "bf16") == 0
    assert steps == ["bf16"] * 5 and not decisions
    assert [r["amp"] for r in _records(tmp_path / "run")] == ["bf16"]
