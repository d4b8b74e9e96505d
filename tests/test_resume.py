"""Crash safety: SIGKILL mid-epoch + resume gives the uninterrupted run's weights; SIGTERM checkpoints and
stops cleanly; damaged checkpoints are detected (and the kept weights named); NaN steps can be skipped and
counted."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inceptionv3.training import loop, state
from inceptionv3.training.config import TrainConfig
from inceptionv3.training.control import TrainingInterrupted
from inceptionv3.training.run import train
from inceptionv3.training.state import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    TrainState,
    checkpoint_candidates,
    load_checkpoint,
    save_checkpoint,
)
from inceptionv3.weights.load import load_model

HELPER = Path(__file__).with_name("killable_train.py")
FIXTURE = Path(__file__).parent / "fixtures" / "mini_run_epoch1"   # see fixtures/README.md
DIGITS = [str(d) for d in range(10)]

torch.set_num_threads(1)


def _cfg(out, **kw) -> TrainConfig:
    # inception_mini (dropout on: its RNG must be restored too) at 32 px, 64 digits, 2 epochs x 4 steps,
    # with an EMA of the weights (restored too).
    base = {"data": "digits", "out": str(out), "arch": "inception_mini", "image_size": 32, "epochs": 2,
            "batch_size": 16, "limit": 64, "workers": 0, "threads": 1, "deterministic": True,
            "save_every": 1, "keep_last": 3, "ema_decay": 0.9}
    return TrainConfig(**{**base, **kw})


def _weights(run) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(Path(run) / "last.pt")
    return {**ckpt["model"], **{f"ema.{k}": v for k, v in ckpt["ema"]["model"].items()}}


def _same_history(a: list[dict], b: list[dict]) -> None:
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return out, train(_cfg(out), progress=False)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, reference, caplog):
    ref_out, ref = reference
    cfg = _cfg(tmp_path / "run")
    marker = tmp_path / "hanging"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INCEPTIONV3_NUM_THREADS": "1"}
    # Loss computation 7 = epoch 2, step 3: checkpoints of steps 1-4 (epoch 1) and 5-6 exist by then.
    cmd = [sys.executable, str(HELPER), json.dumps(cfg.to_dict()), "7", "hang", str(marker)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the training subprocess never reached step 7"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    run = Path(cfg.out)
    # One full training state; the kept step snapshots are weights only.
    assert [p.name for p in checkpoint_candidates(run)] == ["last.pt"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000004.safetensors", "step-00000005.safetensors", "step-00000006.safetensors"]
    assert load_checkpoint(run / "last.pt")["epoch_state"][0]["step"] == 2   # mid-epoch 2
    # A copy whose last.pt is damaged as a failing disk would: resuming says so and names the kept weights.
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    data = (damaged / "last.pt").read_bytes()
    (damaged / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"last.pt: unreadable checkpoint .*the newest weights, "
                                         r".*step-00000006.safetensors, can start a new run"):
        train(_cfg(damaged, resume=str(damaged), save_every=0), progress=False)

    with caplog.at_level(logging.INFO, logger="inceptionv3"):
        result = train(_cfg(run, resume=str(run), save_every=0), progress=False)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "epoch 2, step 2 of 4" in messages
    got, want = _weights(run), _weights(ref_out)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    _same_history(result["history"], ref["history"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    _same_history(lines, ref["history"])


@pytest.mark.parametrize("at", [3, 4])   # mid-epoch 1; its last step (the checkpoint precedes evaluation)
def test_sigterm_finishes_step_checkpoints_and_resumes(tmp_path, reference, monkeypatch, at):
    ref_out, ref = reference
    cfg = _cfg(tmp_path / "run", save_every=0)
    real, calls = loop.compute_loss, {"n": 0}

    def loss_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGTERM)   # arrives mid-step
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "compute_loss", loss_then_sigterm)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match=rf"SIGTERM: stopped after epoch 1 step {at} of 4.*--resume"):
        train(cfg, progress=False)
    assert signal.getsignal(signal.SIGTERM) == handler     # the run's handlers are removed again
    ckpt = load_checkpoint(Path(cfg.out) / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["epoch_state"][0]["step"] == at

    monkeypatch.setattr(loop, "compute_loss", real)
    result = train(_cfg(cfg.out, resume=cfg.out, save_every=0), progress=False)
    got, want = _weights(cfg.out), _weights(ref_out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    _same_history(result["history"], ref["history"])


def test_flipped_bytes_are_detected(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"format": state.CHECKPOINT_FORMAT,
                                                 "model": {"w": torch.arange(4096, dtype=torch.float32)}})
    assert load_checkpoint(path)["model"]["w"][5] == 5
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[400:416])
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(path)


def test_resume_refuses_other_settings_and_missing_runs(tmp_path, reference):
    ref_out, _ = reference
    with pytest.raises(ValueError, match=r"--lr \(the run has 0.002, given 0.01\) cannot change on resume"):
        train(_cfg(ref_out, resume=str(ref_out), lr=0.01), progress=False)
    with pytest.raises(ValueError, match="no checkpoint there"):
        train(_cfg(tmp_path, resume=str(tmp_path)), progress=False)


def test_keeps_last_k_checkpoints(reference):
    ref_out, _ = reference
    names = sorted(p.name for p in (ref_out / "checkpoints").iterdir())
    assert names == ["step-00000006.safetensors", "step-00000007.safetensors", "step-00000008.safetensors"]
    model = load_model(ref_out / "checkpoints" / "step-00000008.safetensors")
    ema = load_checkpoint(ref_out / "last.pt")["ema"]["model"]   # the evaluated weights: the EMA's
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())


def test_skip_nonfinite_counts_skipped_steps(tmp_path, monkeypatch):
    real, calls = loop.compute_loss, {"n": 0}

    def nan_at_2(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("inf") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "compute_loss", nan_at_2)
    result = train(_cfg(tmp_path / "run", skip_nonfinite=True, save_every=0, epochs=1), progress=False)
    assert result["history"][0]["nonfinite_steps"] == 1
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run").values())


def test_save_minutes_checkpoints_inside_epochs(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, save_every=0, save_minutes=1e-9, keep_last=20, epochs=1), progress=False)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"step-{s:08d}.safetensors" for s in (1, 2, 3, 4)]   # steps 1-3 by time, 4 the epoch end


def test_cached_linear_probe_stops_and_resumes_exactly(tmp_path, monkeypatch):
    # The probe trains its head on features computed once; a SIGTERM mid-epoch and --resume (which
    # computes them again) end with the uninterrupted run's head.
    probe = {"recipe": "linear-probe", "ema_decay": 0.0, "save_every": 0}
    whole = train(_cfg(tmp_path / "whole", **probe), progress=False)
    real, calls = loop.compute_loss, {"n": 0}

    def loss_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "compute_loss", loss_then_sigterm)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="stopped after epoch 1 step 3 of 4"):
        train(_cfg(run, **probe), progress=False)
    monkeypatch.setattr(loop, "compute_loss", real)
    resumed = train(_cfg(run, resume=str(run), **probe), progress=False)
    got = load_checkpoint(run / "last.pt")["model"]
    want = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    _same_history(resumed["history"], whole["history"])


def test_a_dying_torchrun_rank_stops_the_others_with_a_message(tmp_path):
    # Rank 1 is SIGKILLed in the backward pass of step 3; rank 0 stops with one message naming the way
    # back, and the checkpoint of step 2 (written before) is intact.
    run = tmp_path / "run"
    cfg = _cfg(run, ema_decay=0.0, dropout=0.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INCEPTIONV3_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HELPER),
           json.dumps(cfg.to_dict()), "3", "die1", str(tmp_path / "marker")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode != 0
    assert re.search(rf"rank 0: another process of this torchrun run stopped \(.*\); this one stops too\. "
                     rf"The checkpoints in {run} are intact: .* --resume {run}", proc.stderr), proc.stderr[-3000:]
    ckpt = load_checkpoint(run / "last.pt")   # verifies the digest
    assert ckpt["world_size"] == 2 and [s["step"] for s in ckpt["epoch_state"]] == [2, 2]


def test_a_run_checkpointed_in_format_1_resumes_to_its_end(tmp_path, capsys, caplog):
    from inceptionv3.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    old = load_checkpoint(run / "checkpoints" / "step-00000006.pt")
    assert old["format"] == "inceptionv3.train-checkpoint/1" and old["epoch"] == 1 and old["step"] == 0
    first = json.loads((run / "metrics.jsonl").read_text())
    # The run's own flags (its config.json), as a user resumes it; where and how it runs may differ.
    with caplog.at_level(logging.INFO, logger="inceptionv3"):
        code = main(["train", "digits", "--resume", str(run), "--arch", "inception_mini", "--epochs", "2",
                     "--batch-size", "32", "--image-size", "32", "--limit", "200", "--optimizer", "sgd",
                     "--amp", "off", "--workers", "0", "--threads", "1", "--no-progress"])
    assert code == 0
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "step-00000006.pt: epoch 2, step 0 of 6" in messages
    # The fixture has no best.safetensors: the resumed epoch's weights become the best.
    assert "best.safetensors is missing: the next epoch's weights are saved as best" in messages
    assert capsys.readouterr().out.strip().endswith(f"->  {run / 'best.safetensors'}")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[0] == first   # the history continues
    end = TrainState.load(run / "last.pt")
    assert (end.epoch, end.step, end.global_step, end.epoch_state) == (2, 0, 12, None)
    assert end.history == lines and end.class_names == DIGITS
    assert end.best_acc1 == lines[1]["val_acc1"]
    # The old run's full state stays; today's snapshots are weights only.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000006.pt", "step-00000012.safetensors"]
    assert any(not torch.equal(end.model[k], v) for k, v in old["model"].items())   # epoch 2 trained
    best = load_model(run / "best.safetensors")
    assert best.meta.class_names == DIGITS and best.arch == "inception_mini"
    assert all(torch.equal(best.state_dict()[k], v) for k, v in end.model.items())
    # Checkpoints are weights files too (--weights RUN/last.pt), in the old format and in today's.
    for path in (run / "last.pt", FIXTURE / "checkpoints" / "step-00000006.pt"):
        model = load_model(path)
        assert model.meta.class_names == DIGITS and model.meta.preprocess.input_size == 32


def test_train_state_is_the_checkpoint_layout(tmp_path):
    saved = load_checkpoint(FIXTURE / "checkpoints" / "step-00000006.pt")
    state = TrainState.load(FIXTURE / "checkpoints" / "step-00000006.pt")
    assert state.FORMAT == CHECKPOINT_FORMAT == saved["format"]
    assert list(state.to_checkpoint()) == [k for k in saved if k != "digest"]   # same keys, same order
    again = load_checkpoint(save_checkpoint(tmp_path / "again.pt", state.to_checkpoint()))
    assert again["digest"] == saved["digest"]                                   # same contents
    assert (state.epoch, state.world_size, state.mid_epoch, len(state.rng)) == (1, 1, False, 1)
    saved_cfg, folder_cfg = TrainConfig.from_dict(state.config).to_dict(), TrainConfig.load(FIXTURE).to_dict()
    assert {k: v for k, v in saved_cfg.items() if k != "out"} == {k: v for k, v in folder_cfg.items() if k != "out"}
    with pytest.raises(CheckpointError, match="without optimizer"):
        TrainState.from_checkpoint({k: v for k, v in saved.items() if k != "optimizer"}, "x.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        TrainState.from_checkpoint({**saved, "format": "inceptionv3.train-checkpoint/9"}, "x.pt")
