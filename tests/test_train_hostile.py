"""`inceptionv3 train` against bad flags, bad data, a folder holding a run, a diverging run, a full disk and
resuming with other flags: one line naming the thing and the fix, the right exit code, nothing lost.

Every run here is inception_mini at 32 px on 32 digits, one or two epochs (a few seconds each)."""
from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from inceptionv3.cli.main import main
from inceptionv3.models.builder import build_model
from inceptionv3.runtime.distributed import env_from_environ
from inceptionv3.training.config import TrainConfig
from inceptionv3.training.control import main_rank_logs
from inceptionv3.training.setup import resolve_image_size
from inceptionv3.training.state import TrainState, load_checkpoint
from inceptionv3.weights.io import read_state_dict, save_model
from inceptionv3.weights.load import load_model
from inceptionv3.weights.preprocess import Preprocess

torch.set_num_threads(1)

ANY_SIZE = ["--arch", "inception_mini", "--epochs", "1", "--batch-size", "16", "--limit", "32",
            "--workers", "0", "--threads", "1", "--no-progress"]
TINY = [*ANY_SIZE, "--image-size", "32"]


def _train(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run (bf16 autocast, a snapshot every step) and what `train` printed."""
    out = tmp_path_factory.mktemp("finished") / "run"
    code = main(["train", "digits", "--out", str(out), *TINY, "--amp", "bf16", "--save-every", "1",
                 "--keep-last", "3"])
    assert code == 0
    return out


@pytest.mark.parametrize("flags, names", [
    (["--threads", "0"], "--threads 0"), (["--threads", "-2"], "--threads -2"),
    (["--label-smoothing", "2"], "--label-smoothing 2.0"),
    (["--label-smoothing", "-1"], "--label-smoothing -1.0"),
    (["--weight-decay", "-1"], "--weight-decay -1.0"), (["--clip-grad", "-1"], "--clip-grad -1.0"),
    (["--lr", "0"], "--lr 0.0"), (["--lr=-0.001"], "--lr -0.001"), (["--lr", "nan"], "--lr nan"),
    (["--epochs", "0"], "--epochs 0"), (["--batch-size", "-4"], "--batch-size -4"),
    (["--accum-steps", "0"], "--accum-steps 0"), (["--workers", "-1"], "--workers -1"),
    (["--compile-backend", "no-such-backend"], "--compile-backend 'no-such-backend'"),
    (["--recipe", "finetune"], "--recipe finetune needs --weights"),
    (["--resume", "elsewhere", "--overwrite"], "--overwrite and --resume exclude each other"),
])
def test_bad_flags_are_one_line_exit_2_before_any_compute(tmp_path, capsys, flags, names):
    out = tmp_path / "run"
    code, _, err = _train(capsys, "digits", "--out", str(out), *TINY, *flags)
    line = _one_line(err)
    assert code == 2 and line.startswith("inceptionv3 train: error: ") and names in line, line
    assert not out.exists()   # nothing was started


def test_the_python_api_has_the_same_checks():
    with pytest.raises(ValueError, match=r"--label-smoothing 1.5: must be >= 0 and < 1"):
        TrainConfig(data="digits", label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"--threads 0: .*; --clip-grad -1: must be >= 0"):
        TrainConfig(data="digits", threads=0, clip_grad=-1)


def test_finetune_takes_the_input_size_of_its_weights(tmp_path, capsys, caplog):
    weights = tmp_path / "mini40.safetensors"
    save_model(build_model("inception_mini", num_classes=10), weights,
               class_names=[str(d) for d in range(10)], preprocess=Preprocess(input_size=40, resize_size=40))
    out = tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="inceptionv3"):
        code, _, _ = _train(capsys, "digits", "--out", str(out), *ANY_SIZE, "--recipe", "finetune",
                            "--weights", str(weights))
    assert code == 0
    assert "input size 40 px, the one --weights" in caplog.text
    assert json.loads((out / "config.json").read_text())["image_size"] == 40
    assert load_model(out / "best.safetensors").meta.preprocess.input_size == 40
    # --image-size still chooses; without weights the size is 75.
    given = TrainConfig(data="digits", arch="inception_mini", weights=str(weights), image_size=32)
    assert resolve_image_size(given).image_size == 32
    assert resolve_image_size(TrainConfig(data="digits")).image_size == 75


def test_a_folder_of_unreadable_images_is_an_error_and_saves_no_best(tmp_path, capsys):
    data = tmp_path / "broken"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        for i in range(5):
            (data / name / f"{i}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "run"
    code, stdout, err = _train(capsys, str(data), "--out", str(out), *TINY, "--val-fraction", "0.4")
    line = _one_line(err)
    assert code == 1, err
    assert f"{data}: none of the training images could be read" in line and "bad_images.txt" in line
    assert "top-1" not in stdout
    assert not (out / "best.safetensors").exists() and not (out / "last.pt").exists()
    assert len((out / "bad_images.txt").read_text().splitlines()) > 1


def test_a_folder_holding_a_run_is_refused_and_overwrite_removes_only_run_files(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = _train(capsys, "digits", "--out", str(run), *TINY)
    line = _one_line(err)
    assert code == 2 and f"--out {run} already holds a training run" in line
    assert "--resume" in line and "--overwrite" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before   # untouched

    (run / "notes.txt").write_text("mine\n")
    (run / "checkpoints" / "keep.me").write_text("also mine\n")
    code, _, _ = _train(capsys, "digits", "--out", str(run), *TINY, "--keep-last", "1", "--overwrite")
    assert code == 0
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "checkpoints" / "keep.me").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002.safetensors"]


def test_resume_takes_the_saved_flags_and_extends_a_finished_run(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    code, _, err = _train(capsys, "--resume", str(run), "--no-progress")
    assert code == 2 and "the run finished its 1 epoch; pass --epochs N with N > 1" in _one_line(err)
    code, _, err = _train(capsys, "--resume", str(run), "--lr", "0.5", "--seed", "3")
    line = _one_line(err)
    assert code == 2 and "--lr (the run has 0.002, given 0.5), --seed (the run has 0, given 3)" in line
    assert "cannot change on resume" in line

    code, stdout, _ = _train(capsys, "--resume", str(run), "--epochs", "2", "--workers", "0", "--no-progress")
    assert code == 0 and "best held-out top-1 (fp32)" in stdout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    cfg = TrainConfig.load(run)
    assert (cfg.epochs, cfg.arch, cfg.image_size, cfg.amp) == (2, "inception_mini", 32, "bf16")
    assert cfg.resume == str(run)
    assert TrainState.load(run / "last.pt").epoch == 2


def test_one_full_state_and_cheap_step_snapshots(finished):
    snapshots = sorted((finished / "checkpoints").iterdir())
    assert [p.name for p in snapshots] == ["step-00000001.safetensors", "step-00000002.safetensors"]
    last = (finished / "last.pt").stat().st_size
    for path in snapshots:   # the weights only: AdamW's two moments make last.pt about 3x as large
        assert path.stat().st_size < last / 2
        model = load_model(path)
        assert model.arch == "inception_mini" and model.meta.preprocess.input_size == 32
    _, meta = read_state_dict(snapshots[-1])
    assert meta["extra"]["global_step"] == 2
    assert torch.equal(load_model(snapshots[-1]).state_dict()["fc.weight"],
                       load_checkpoint(finished / "last.pt")["model"]["fc.weight"])


def test_a_diverging_run_is_one_line_exit_1_and_keeps_the_last_good_state(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _train(capsys, "digits", "--out", str(out), *TINY, "--epochs", "2", "--save-every", "1",
                               "--lr", "1e12", "--amp", "off")
    line = _one_line(err)
    assert code == 1, err
    match = re.search(r"loss is (nan|inf) at epoch (\d), step (\d+) .*: the run diverged", line)
    assert match, line
    assert "Lower --lr (now 1e+12)" in line and "--clip-grad" in line and "Traceback" not in err
    epoch, step = int(match.group(2)), int(match.group(3))
    if (epoch, step) != (1, 1):   # a checkpoint of the step before exists, and says so
        assert f"the last good state is {out / 'last.pt'}" in line
        state = TrainState.load(out / "last.pt")
        assert state.global_step == (epoch - 1) * 2 + step - 1


def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    def disk_full(obj, f, *a, **kw):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "run"
    code, _, err = _train(capsys, "digits", "--out", str(out), *TINY)
    line = _one_line(err)
    assert code == 2
    assert f"cannot write {out / 'last.pt'}: no space left on device" in line and f"--resume {out}" in line
    assert not (out / "last.pt").exists()
    assert [p.name for p in out.iterdir() if "tmp" in p.name] == []   # no temporary file left behind


def test_the_printed_held_out_top1_is_what_evaluate_prints(finished, capsys):
    # The run trained with bf16 autocast; its held-out figure is fp32, as `evaluate` computes it.
    history = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    assert main(["evaluate", "digits", "--weights", str(finished / "best.safetensors"), "--precision", "fp32",
                 "--backend", "torch", "--workers", "0", "--threads", "1"]) == 0
    printed = re.search(r"top-1: ([0-9.]+)%", capsys.readouterr().out)
    assert printed and float(printed.group(1)) == pytest.approx(history[0]["val_acc1"], abs=0.005)


def test_under_torchrun_only_rank_0_logs_progress(caplog):
    log = logging.getLogger("inceptionv3.training.run")
    for rank, shown in (("0", True), ("1", False)):
        env = env_from_environ({"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="inceptionv3"), main_rank_logs(env.is_main):
            log.info("training inception_mini on digits")
            log.warning("a warning")
        assert ("training inception_mini on digits" in caplog.text) is shown
        assert "a warning" in caplog.text
