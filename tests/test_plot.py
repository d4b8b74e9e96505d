"""`inceptionv3 plot`: PNG curves from metrics.jsonl and the confusion matrix a training run saved."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from inceptionv3.cli.main import main
from inceptionv3.training.config import TrainConfig
from inceptionv3.training.plot import plot_run
from inceptionv3.training.run import train

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(data="digits", out=str(out), arch="inception_mini", image_size=32, epochs=2,
                      batch_size=16, limit=64, workers=0, threads=1), progress=False)
    return out


def _png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plot_writes_curves_and_confusion(run, tmp_path):
    files = plot_run(run, tmp_path / "plots")
    assert sorted(p.name for p in files) == ["accuracy.png", "confusion.png", "loss.png", "lr.png"]
    for p in files:
        w, h = _png(p)
        assert w > 100 and h > 100 and p.stat().st_size > 5000, p
    assert json.loads((run / "confusion.json").read_text())["class_names"] == [str(d) for d in range(10)]


def test_plot_command_default_folder(run, capsys):
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[-1] for p in printed) == ["accuracy.png", "confusion.png", "loss.png",
                                                              "lr.png"]
    assert all((run / "plots" / name).stat().st_size > 0 for name in ("loss.png", "lr.png"))


def test_curves_without_a_confusion_matrix(tmp_path):
    records = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "train_acc1": 10.0 * e,
                "val_acc1": 9.0 * e, "val_acc5": 50.0, "lr": 1e-3 / e} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    files = plot_run(tmp_path)
    assert [p.name for p in files] == ["loss.png", "accuracy.png", "lr.png"]
    assert all(p.parent == tmp_path / "plots" for p in files)


def test_folder_without_metrics_says_what_to_give(tmp_path, capsys):
    with pytest.raises(ValueError, match="no metrics.jsonl here; give the --out folder"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no finished epoch yet"):
        plot_run(tmp_path)
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
