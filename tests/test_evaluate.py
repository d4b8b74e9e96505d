"""Metrics on hand-built cases (a fake model whose outputs we choose), the report, the plot, evaluate()."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inceptionv3.models.builder import build_model
from inceptionv3.tasks.evaluate import evaluate, evaluate_model, format_report, plot_confusion
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess

torch.set_num_threads(1)


class TableModel(nn.Module):
    """Returns row i of a fixed logits table for an input whose pixels all hold i."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.seen: list[tuple[bool, bool]] = []  # (training, inference mode) at each call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return self.table[x[:, 0, 0, 0].long()]


def ranked(order: list[int], num_classes: int) -> list[float]:
    """Logits whose ranking is `order` (best first)."""
    row = [0.0] * num_classes
    for rank, c in enumerate(order):
        row[c] = float(num_classes - rank)
    return row


def batches(indices: list[int], labels: list[int], sizes: list[int], skipped: list[int] | None = None):
    out, start = [], 0
    for b, size in enumerate(sizes):
        idx = torch.tensor(indices[start:start + size], dtype=torch.float32)
        images = idx[:, None, None, None].expand(-1, 3, 2, 2).clone()
        y = torch.tensor(labels[start:start + size])
        out.append((images, y) if skipped is None else (images, y, skipped[b]))
        start += size
    return out


def test_confusion_precision_recall_by_hand():
    # 4 classes; class 3 never occurs and is never predicted. Top-1 predictions: 0 0 1 | 1 1 2
    # for labels 0 0 0 | 1 2 2.
    labels = [0, 0, 0, 1, 2, 2]
    table = torch.tensor([
        ranked([0, 1, 2, 3], 4),
        ranked([0, 2, 1, 3], 4),
        ranked([1, 0, 2, 3], 4),
        ranked([1, 3, 2, 0], 4),
        ranked([1, 2, 0, 3], 4),
        ranked([2, 1, 0, 3], 4),
    ])
    model = TableModel(table).train()
    r = evaluate_model(model, batches(list(range(6)), labels, [4, 2], skipped=[2, 0]), num_classes=4)

    expected = np.array([[2, 1, 0, 0],
                         [0, 1, 0, 0],
                         [0, 1, 1, 0],
                         [0, 0, 0, 0]])
    assert r["confusion"].dtype == np.int64
    np.testing.assert_array_equal(r["confusion"], expected)
    assert r["n"] == 6 and r["skipped"] == 2
    assert r["top1"] == pytest.approx(100 * 4 / 6)
    assert r["topk"] == 4 and r["top5"] == pytest.approx(100.0)   # top-5 capped at 4 classes: always a hit
    # precision = diagonal / column sums (2, 3, 1, 0); recall = diagonal / row sums (3, 1, 2, 0); 0/0 -> 0
    np.testing.assert_allclose(r["precision"], [1.0, 1 / 3, 1.0, 0.0])
    np.testing.assert_allclose(r["recall"], [2 / 3, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(r["support"], [3, 1, 2, 0])
    assert r["loss"] == pytest.approx(F.cross_entropy(table, torch.tensor(labels)).item())
    # eval mode, inference mode, every batch
    assert model.seen == [(False, True), (False, True)]


def test_top5_by_hand():
    # 7 classes; the true class (0) ranks 1st, 5th and 6th.
    table = torch.tensor([
        ranked([0, 1, 2, 3, 4, 5, 6], 7),
        ranked([1, 2, 3, 4, 0, 5, 6], 7),
        ranked([1, 2, 3, 4, 5, 0, 6], 7),
    ])
    r = evaluate_model(TableModel(table), batches([0, 1, 2], [0, 0, 0], [3]), num_classes=7)
    assert r["topk"] == 5
    assert r["top1"] == pytest.approx(100 / 3)
    assert r["top5"] == pytest.approx(200 / 3)
    assert r["confusion"][0].tolist() == [1, 2, 0, 0, 0, 0, 0]


def test_empty_batches_are_ignored():
    table = torch.tensor([ranked([1, 0], 2)])
    loader = [(torch.empty(0), torch.empty(0, dtype=torch.long), 3)] + batches([0], [1], [1])
    r = evaluate_model(TableModel(table), loader, num_classes=2)
    assert r["n"] == 1 and r["skipped"] == 3 and r["top1"] == 100.0


def _result(n_classes: int) -> dict:
    conf = np.eye(n_classes, dtype=np.int64) * 3
    conf[0, 1] = 1
    ones = np.ones(n_classes)
    return {"top1": 90.0, "top5": 100.0, "topk": min(5, n_classes), "loss": 0.25, "n": int(conf.sum()),
            "skipped": 1, "confusion": conf, "precision": ones * 0.9, "recall": ones * 0.8,
            "support": conf.sum(axis=1)}


def test_format_report():
    text = format_report(_result(3), ["cat", "dog", "eel"])
    assert "top-1: 90.00%" in text and "top-3" not in text     # top-3 of 3 classes is 100% by definition
    assert "top-5: 100.00%" in format_report(_result(6), [f"c{i}" for i in range(6)])
    assert "skipped 1" in text
    assert "precision" in text and "recall" in text and "support" in text
    lines = text.splitlines()
    assert any(line.split() == ["cat", "0.900", "0.800", "4"] for line in lines)
    assert any(line.split() == ["cat", "3", "1", "0"] for line in lines)   # confusion row of "cat"
    assert any(line.split() == ["eel", "0", "0", "3"] for line in lines)


def test_format_report_many_classes():
    names = [f"class{i}" for i in range(15)]
    text = format_report(_result(15), names)
    assert "14 class14" in text   # numbered rows, numbered columns keep the matrix narrow
    wide = format_report(_result(25), [f"c{i}" for i in range(25)])
    assert "too many to print" in wide and "--plot" in wide


def test_plot_confusion_writes_png(tmp_path):
    path = tmp_path / "sub" / "confusion.png"
    plot_confusion(_result(3)["confusion"], ["a", "b", "c"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["confusion.png"]   # no temp file left behind
    with pytest.raises(ValueError, match="2 class names"):
        plot_confusion(np.zeros((3, 3), dtype=np.int64), ["a", "b"], tmp_path / "x.png")


def test_plot_confusion_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # import now fails
    with pytest.raises(ImportError, match=r"inceptionv3\[plot\]"):
        plot_confusion(np.eye(2, dtype=np.int64), ["a", "b"], tmp_path / "x.png")


def _saved_mini(tmp_path, class_names):
    torch.manual_seed(0)
    model = build_model("inception_mini", num_classes=len(class_names))
    pre = Preprocess(input_size=32, resize_size=32)
    return save_model(model, tmp_path / "mini.safetensors", class_names=class_names, preprocess=pre)


def test_evaluate_saved_model_on_digits(tmp_path):
    path = _saved_mini(tmp_path, [str(d) for d in range(10)])
    r = evaluate("digits", str(path), split="val", batch_size=150, workers=0, device="cpu")
    assert r["n"] == 450 and r["confusion"].sum() == 450 and r["confusion"].shape == (10, 10)
    assert r["class_names"] == [str(d) for d in range(10)]
    assert 0.0 <= r["top1"] <= r["top5"] <= 100.0


def test_evaluate_refuses_other_class_names(tmp_path):
    path = _saved_mini(tmp_path, list("abcdefghij"))
    with pytest.raises(ValueError, match="class names of the model"):
        evaluate("digits", str(path), workers=0, device="cpu")


def test_multi_crop_averages_probabilities_not_votes():
    # Image 0 has 3 crops: two mildly prefer class 1, one strongly prefers class 0. Mean probability picks 0
    # (a majority vote over crops would pick 1); image 1's crops all prefer class 1.
    table = torch.tensor([[0.0, 0.2], [8.0, 0.0], [0.0, 3.0]])
    crops = torch.tensor([[0, 0, 1], [2, 2, 2]], dtype=torch.float32)           # table row of each crop
    images = crops[:, :, None, None, None].expand(-1, -1, 3, 2, 2).clone()      # N x K x C x H x W
    labels = torch.tensor([0, 1])
    r = evaluate_model(TableModel(table), [(images, labels)], num_classes=2, chunk=2)
    probs = table.softmax(1)[crops.long()].mean(1)
    assert probs.argmax(1).tolist() == [0, 1] and r["top1"] == 100.0
    assert r["loss"] == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-6)


def test_multi_crop_views():
    from PIL import Image

    from inceptionv3.data.transforms import eval_transform, multi_crop_transform

    rng = np.random.default_rng(0)
    pre = Preprocess(input_size=32, resize_size=37)
    for hw in [(40, 56), (56, 40), (37, 37)]:
        img = Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
        center = eval_transform(pre)(img)
        views = {k: multi_crop_transform(pre, k)(img) for k in (10, 12, 144)}
        assert [v.shape[0] for v in views.values()] == [10, 12, 144]
        assert all(v.shape[1:] == center.shape for v in views.values())
        for k, v in views.items():
            half = k // 2
            assert torch.equal(v[half:], v[:half].flip(-1))          # the second half mirrors the first
        assert torch.equal(views[10][4], center)                     # ten-crop's center is the 1-crop view
        if hw[0] == hw[1]:
            assert torch.equal(views[12][4], center)
        assert torch.equal(views[144][6:12], views[12][:6])           # 12 crops: base scale, middle square
        assert len({tuple(x.flatten()[:50].tolist()) for x in views[144][:72]}) > 12   # 4 scales x 3 squares
    with pytest.raises(ValueError, match="crops must be one of"):
        multi_crop_transform(pre, 7)


def test_evaluate_with_crops_on_digits(tmp_path):
    path = _saved_mini(tmp_path, [str(d) for d in range(10)])
    one = evaluate("digits", str(path), batch_size=150, workers=0, device="cpu")
    twelve = evaluate("digits", str(path), batch_size=240, workers=0, device="cpu", crops=12)
    assert one["n"] == twelve["n"] == 450 and twelve["crops"] == 12
    assert twelve["confusion"].sum() == 450
    assert twelve["loss"] != pytest.approx(one["loss"], rel=1e-6)   # other views, other numbers
    with pytest.raises(ValueError, match="--crops 3"):
        evaluate("digits", str(path), workers=0, device="cpu", crops=3)


def _labelled_folder(root, unreadable: int):
    """root/val/{a,b}: two images per class, the first ``unreadable`` of them not images at all."""
    from PIL import Image
    rng = np.random.default_rng(0)
    k = 0
    for c in "ab":
        (root / "val" / c).mkdir(parents=True)
        for i in range(2):
            p = root / "val" / c / f"{i}.png"
            if k < unreadable:
                p.write_bytes(b"not an image")
            else:
                Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(p)
            k += 1
    (root / "train").mkdir()
    for c in "ab":
        (root / "train" / c).mkdir()
    return root


def test_cli_exit_codes_for_unreadable_images_and_no_top_k_of_two_classes(tmp_path, capsys):
    from inceptionv3.cli.main import main
    path = _saved_mini(tmp_path, ["a", "b"])
    common = ["--weights", str(path), "--workers", "0", "--device", "cpu"]
    assert main(["evaluate", str(_labelled_folder(tmp_path / "ok", 0)), *common]) == 0
    out = capsys.readouterr().out
    assert "top-1:" in out and "top-2" not in out and "top-5" not in out     # 2 classes: top-1 only
    assert main(["evaluate", str(_labelled_folder(tmp_path / "some", 1)), *common]) == 1
    out, err = capsys.readouterr()
    assert "images: 3 (skipped 1 unreadable)" in out and "1 images could not be read" in err
    plot = tmp_path / "c.png"
    assert main(["evaluate", str(_labelled_folder(tmp_path / "none", 4)), *common, "--plot", str(plot)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and not plot.exists()                                   # no result, no drawing
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "none of the 4 images of the val split could be read" in errors[0]
