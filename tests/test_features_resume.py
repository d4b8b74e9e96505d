"""`features` keeps finished rows as it goes: a run stopped by a crash or SIGTERM resumes where it stopped
and gives what an uninterrupted run gives; a resume folder of another job, or not ours, is refused."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.cli.main import main
from inceptionv3.data.paths import expand_paths
from inceptionv3.engine import runner
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
    with pytest.raises(ValueError, match="not a resume folder"):
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
