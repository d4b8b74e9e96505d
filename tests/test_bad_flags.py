"""Bad flags across the commands: one line naming the flag and the fix, exit code 2, before any compute;
and every command's --help answers."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.bench import harness
from inceptionv3.cli.main import COMMANDS, main
from inceptionv3.engine import runner
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("flags")
    torch.manual_seed(0)
    weights = save_model(build_model("inception_mini", num_classes=3).eval(), root / "mini.safetensors",
                         class_names=["cat", "dog", "eel"],
                         preprocess=Preprocess(input_size=48, resize_size=52, interpolation="bilinear"))
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "eel"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "imgs" / c / f"{i}.png")
    return weights, root / "imgs"


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a command gets as far as running the network or the benchmark."""
    def refuse(*args, **kwargs):
        raise AssertionError("the command computed before checking its flags")
    monkeypatch.setattr(runner, "run", refuse)
    monkeypatch.setattr(harness, "run_bench", refuse)
    monkeypatch.setattr("inceptionv3.tasks.evaluate.evaluate_model", refuse)


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "error" in err, err          # one line
    for needle in needles:
        assert needle in err, err
    return err


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into: a 0555 folder, or for root (who ignores the mode) /sys."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    return Path("/sys")


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_answers_help(module, capsys):
    name = importlib.import_module(f"inceptionv3.cli.{module}").NAME    # inception_score is "is"
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"usage: inceptionv3 {name}" in capsys.readouterr().out


def _commands(job) -> dict[str, list[str]]:
    weights, folder = job
    return {
        "predict": ["predict", str(folder), "--weights", str(weights)],
        "features": ["features", str(folder), "--weights", str(weights), "--out", str(folder.parent / "f.npz")],
        "evaluate": ["evaluate", str(folder), "--weights", str(weights)],
    }


@pytest.mark.parametrize("command", ["predict", "features", "evaluate"])
def test_device_batch_size_and_a_missing_cuda(job, command, no_compute, capsys):
    argv = _commands(job)[command]
    _one_line_error(capsys, [*argv, "--device", "banana"], "--device banana", "cpu")
    _one_line_error(capsys, [*argv, "--batch-size", "0"], "--batch-size")
    if not torch.cuda.is_available():
        _one_line_error(capsys, [*argv, "--device", "cuda"], "--device cuda", "CUDA is not available")
    assert not (job[1].parent / "f.npz.partial").exists()


def test_bench_batch_size_zero(no_compute, capsys):
    _one_line_error(capsys, ["bench", "--batch-size", "0"], "--batch-size 0")


def test_top_k_larger_than_the_classes_names_them(job, no_compute, capsys):
    _one_line_error(capsys, [*_commands(job)["predict"], "--top-k", "9"],
                    "--top-k 9", "only 3 classes (cat, dog, eel)", "--top-k 3")


def test_unknown_output_extension(job, no_compute, capsys):
    weights, folder = job
    _one_line_error(capsys, ["features", str(folder), "--weights", str(weights), "--out", "x.xyz"],
                    "--out x.xyz", ".npy")


def test_outputs_in_a_folder_that_cannot_take_them_fail_before_the_run(job, tmp_path, no_compute, capsys):
    weights, folder = job
    ro = _read_only_folder(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "d.npz").mkdir()
    for out, why in ((ro / "f.npz", "cannot write into"), (ro / "new" / "f.npz", "cannot create a folder in"),
                     (a_file / "f.npz", "is not a folder"), (tmp_path / "d.npz", "is a folder")):
        err = _one_line_error(capsys, ["features", str(folder), "--weights", str(weights), "--out", str(out)],
                              "--out", why)
        assert ".tmp" not in err and "probe" not in err        # never a temporary name
    _one_line_error(capsys, ["evaluate", str(folder), "--weights", str(weights), "--plot", str(ro / "c.png")],
                    "--plot", "cannot write into")
    _one_line_error(capsys, ["bench", "--json", str(ro / "b.json")], "--json", "cannot write into")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "d.npz", "ro"]


def test_a_missing_output_folder_is_made(job, tmp_path, capsys):
    weights, folder = job
    out = tmp_path / "new" / "deeper" / "f.npz"
    assert main(["features", str(folder), "--weights", str(weights), "--out", str(out), "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 0
    assert np.load(out)["features"].shape == (6, 288)


def test_verbose_after_the_command(job, capsys):
    weights, folder = job
    img = str(next(folder.rglob("*.png")))
    assert main(["predict", img, "--weights", str(weights), "--workers", "0", "--device", "cpu", "-v"]) == 0
    assert "cat" in capsys.readouterr().out
    # -v shows the traceback of an error instead of the one line
    with pytest.raises(ValueError, match="--top-k 9"):
        main(["predict", img, "--weights", str(weights), "--top-k", "9", "--verbose"])
    assert os.environ.get("INCEPTIONV3_HOME")    # the suite's own cache folder, untouched by the flags
