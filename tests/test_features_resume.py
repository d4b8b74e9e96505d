"""`features` keeps finished rows as it goes: a run stopped by a crash or SIGTERM resumes where it stopped
and gives what an uninterrupted run gives; a resume folder of another job, or not ours, is refused."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.cli.main import main
from inceptionv3.data.paths import expand_paths
from inceptionv3.engine import runner
from inceptionv3.runtime.files import read_path_lines, temp_name
from inceptionv3.tasks import features
from inceptionv3.tasks.features import discard_partial, extract_features
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess

_REAL_RUN = runner.run


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    model = build_model("inception_mini", num_classes=3).eval()
    weights = save_model(model, root / "mini.safetensors",
                         preprocess=Preprocess(input_size=48, resize_size=52, interpolation="bilinear"))
    folder = root / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    (folder / "img_01_broken.png").write_bytes(b"not an image")   # a failure in the part that gets saved
    return weights, folder


def _extract(job, **kw):
    weights, folder = job
    kw = {"batch_size": 3, "workers": 0, "backend": "torch", "device": "cpu", **kw}
    return extract_features([folder], weights=str(weights), **kw)


def _same(got, want) -> None:
    assert got.paths == want.paths and got.failures == want.failures
    np.testing.assert_allclose(got.features, want.features, rtol=1e-5, atol=1e-6)


def _stop_after(monkeypatch, steps: int | None, computed: list, kept: list, stop=None) -> None:
    """runner.run that records what it was asked to compute and stops after ``steps`` batches."""
    def run(model, paths, *args, **kwargs):
        computed.extend(paths)
        for n, step in enumerate(_REAL_RUN(model, paths, *args, **kwargs)):
            if n == steps:
                (stop or (lambda: (_ for _ in ()).throw(RuntimeError("power cut"))))()
            kept.extend(paths[i] for i in step.indices + [k for k, _ in step.failures])
            yield step
    monkeypatch.setattr(runner, "run", run)


def test_resume_after_a_crash_equals_an_uninterrupted_run(job, tmp_path, monkeypatch):
    want = _extract(job)
    assert len(want.paths) == 10 and len(want.failures) == 1
    partial = tmp_path / "f.npz.partial"
    monkeypatch.setattr(features, "FLUSH_ROWS", 3)
    computed, kept = [], []
    _stop_after(monkeypatch, 2, computed, kept)
    with pytest.raises(RuntimeError, match="power cut"):
        _extract(job, resume=partial)
    assert len(kept) == 6 and list(partial.glob("part-*.npz"))      # two finished batches on disk
    computed2, kept2 = [], []
    _stop_after(monkeypatch, None, computed2, kept2)
    got = _extract(job, resume=partial)
    everything = expand_paths([job[1]])
    assert computed2 == [p for p in everything if p not in kept]      # only the missing images ran
    _same(got, want)
    # all done: a third call computes nothing and returns the same
    computed3 = []
    _stop_after(monkeypatch, None, computed3, [])
    _same(_extract(job, resume=partial), want)
    assert computed3 == []


def test_cli_sigterm_keeps_rows_and_the_rerun_finishes(job, tmp_path, monkeypatch, capsys):
    weights, folder = job
    out = tmp_path / "f.npz"
    argv = ["features", str(folder), "--weights", str(weights), "--out", str(out), "--workers", "0",
            "--batch-size", "3", "--device", "cpu", "--backend", "torch", "--no-progress"]
    computed, kept = [], []
    _stop_after(monkeypatch, 2, computed, kept, stop=lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "run the same command again to continue" in err and "f.npz.partial" in err
    assert not out.exists() and list((tmp_path / "f.npz.partial").glob("part-*.npz"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL    # the handler was put back
    computed2, kept2 = [], []
    _stop_after(monkeypatch, None, computed2, kept2)
    assert main(argv) == 1                       # 1: the broken image is reported
    assert len(computed2) == 11 - len(kept)
    assert not (tmp_path / "f.npz.partial").exists()
    z = np.load(out)
    want = _extract(job)
    assert list(z["paths"]) == want.paths
    np.testing.assert_allclose(z["features"], want.features, rtol=1e-5, atol=1e-6)


def test_resume_folder_of_another_job_or_not_ours(job, tmp_path):
    partial = tmp_path / "p"
    _extract(job, resume=partial)
    with pytest.raises(ValueError, match="another job.*--restart"):
        _extract(job, layer="logits", resume=partial)
    got = _extract(job, layer="logits", resume=partial, restart=True)
    assert got.features.shape == (10, 3)
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not ours"):
        _extract(job, resume=stranger)
    with pytest.raises(ValueError, match="did not write .notes.txt."):
        discard_partial(stranger)
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_unreadable_part_is_computed_again(job, tmp_path, caplog):
    want = _extract(job)
    partial = tmp_path / "p"
    _extract(job, resume=partial)
    (part,) = partial.glob("part-*.npz")
    part.write_bytes(b"half a file")
    with caplog.at_level(logging.WARNING):
        _same(_extract(job, resume=partial), want)
    assert "unreadable" in caplog.text


def test_cli_unknown_out_format_fails_before_the_run(job, tmp_path, capsys):
    weights, folder = job
    assert main(["features", str(folder), "--weights", str(weights), "--out", str(tmp_path / "f.txt")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "f.txt.partial").exists()


def _argv(job, out, *extra: str) -> list[str]:
    weights, folder = job
    return ["features", str(folder), "--weights", str(weights), "--out", str(out), "--workers", "0",
            "--batch-size", "3", "--device", "cpu", "--no-progress", *extra]


def test_a_second_run_on_the_same_out_is_refused_and_nothing_blocks_the_next(job, tmp_path, capsys):
    out = tmp_path / "f.npz"
    with features.output_lock(out) as lock:          # another run holds OUT.lock
        assert lock.read_text().strip() == str(os.getpid())
        assert main(_argv(job, out)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {os.getpid()}" in err and "another --out" in err
    assert not out.exists() and not (tmp_path / "f.npz.partial").exists()
    (tmp_path / "f.npz.lock").write_text("4194304\n")   # a killed run's lock file: nobody holds its lock
    assert main(_argv(job, out)) == 1                # the broken image; no lock or folder left behind
    assert out.exists() and not (tmp_path / "f.npz.lock").exists()
    assert not (tmp_path / "f.npz.partial").exists()


def test_a_usage_error_leaves_nothing_that_blocks_the_corrected_command(job, tmp_path, capsys):
    out = tmp_path / "f.npz"
    assert main(_argv(job, out, "--precision", "int8", "--backend", "onnxruntime")) == 2   # no --calibration
    assert "calibration" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []          # no .partial, no lock, no temp file
    # a folder of another job that holds no rows yet is taken over; with rows, --restart always works
    partial = tmp_path / "f.npz.partial"
    partial.mkdir()
    (partial / "manifest.json").write_text('{"job": "another"}\n')
    assert main(_argv(job, out)) == 1
    partial.mkdir()
    np.savez(partial / "part-r0-0000000000.npz", indices=np.array([0]), features=np.zeros((1, 4), np.float32),
             failed_indices=np.zeros(0, np.int64), failed_reasons=np.zeros(0, str))   # rows, no manifest
    assert main(_argv(job, out)) == 2 and "--restart" in capsys.readouterr().err
    assert main(_argv(job, out, "--restart")) == 1 and not partial.exists()


def test_a_resumed_run_keeps_the_engine_the_rows_were_made_with(job, tmp_path, monkeypatch):
    want = _extract(job)
    partial = tmp_path / "f.npz.partial"
    monkeypatch.setattr(features, "FLUSH_ROWS", 3)
    _stop_after(monkeypatch, 2, [], [])
    with pytest.raises(RuntimeError, match="power cut"):
        _extract(job, resume=partial, backend="auto")
    manifest = json.loads((partial / "manifest.json").read_text())
    assert manifest["engine"] == {"backend": "torch", "precision": "fp32"}
    # Fewer images are left: say "auto" now picks another backend. The resumed rows still come from torch.
    monkeypatch.setattr(features, "resolve_engine", lambda *a: ("fp32", "onnxruntime"))
    used = []
    monkeypatch.setattr(runner, "run", lambda model, paths, output, options, **kw: (
        used.append(options.backend), _REAL_RUN(model, paths, output, options, **kw))[1])
    _same(_extract(job, resume=partial, backend="auto"), want)
    assert used == ["torch"]
    with pytest.raises(ValueError, match="--backend torch"):
        _extract(job, resume=partial, backend="onnxruntime")       # an explicit other engine: say so


def test_npy_pairs_never_mismatch_and_names_with_newlines_stay_one_line(job, tmp_path, monkeypatch, capsys):
    weights, _ = job
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["plain.png", "new\nline.png", "tab\there.png"]
    rng = np.random.default_rng(1)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "f.npy"
    argv = ["features", str(folder), "--weights", str(weights), "--out", str(out), "--workers", "0",
            "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    listed = read_path_lines((tmp_path / "f.paths.txt").read_text())
    assert sorted(Path(p).name for p in listed) == sorted(names) and len(listed) == len(np.load(out))
    (folder / "plain.png").unlink()
    # Stopped between the matrix and its paths: the old paths file is gone first, never left beside
    # the new matrix.
    monkeypatch.setattr(features, "path_lines", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(argv) == 130
    assert len(np.load(out)) == 2 and not (tmp_path / "f.paths.txt").exists()
    monkeypatch.undo()
    assert main(argv) == 0      # the kept rows finish the pair
    assert len(read_path_lines((tmp_path / "f.paths.txt").read_text())) == len(np.load(out)) == 2


def test_disk_full_names_the_output_not_a_temporary_file(job, tmp_path, monkeypatch, capsys):
    out = tmp_path / "f.npz"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    assert main(_argv(job, out)) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "no space left" in err.lower() and ".tmp" not in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz.partial"]    # the finished rows, for the rerun
    monkeypatch.undo()
    assert main(_argv(job, out)) == 1 and not (tmp_path / "f.npz.partial").exists()


def test_stale_temporary_files_of_a_killed_run_are_cleaned(job, tmp_path, monkeypatch):
    partial = tmp_path / "f.npz.partial"
    monkeypatch.setattr(features, "FLUSH_ROWS", 3)
    _stop_after(monkeypatch, 2, [], [])
    with pytest.raises(RuntimeError, match="power cut"):
        _extract(job, resume=partial)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = temp_name(partial / "part-r0-0000000009.npz")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    stale.write_bytes(b"half")                      # as a SIGKILL leaves it
    monkeypatch.undo()
    assert main(_argv(job, tmp_path / "f.npz")) == 1
    assert not partial.exists() and [p.name for p in tmp_path.iterdir()] == ["f.npz"]
