"""Explanations: the map highlights the region that decides the class (a small network trained here on
images where only the top-left quadrant carries the label), and the ``explain`` command writes its
overlays and maps, resolves class names, reports bad images and refuses bad flags before any work."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionv3.cli.main import main
from inceptionv3.models.mini import inception_mini
from inceptionv3.tasks.explain import (
    METHODS,
    colorize,
    explain,
    explain_files,
    input_view,
    output_names,
    overlay,
    resolve_target,
)
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess

SIDE = 75                 # the mini network's last block is 7 x 7 here
HALF = SIDE // 2
SQUARE = SIDE // 5
PRE = Preprocess(input_size=SIDE, resize_size=SIDE)
NAMES = ["plain", "square"]


def quadrant_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark noise everywhere; the odd-numbered images (class 1) also hold a bright square somewhere in
    the top-left quadrant, which is all that tells the classes apart. Normalised as PRE says (mean=std=0.5)."""
    x = torch.rand(n, 3, SIDE, SIDE, generator=g) * 0.6 - 0.8
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i] == 1:
            r, c = torch.randint(0, HALF - SQUARE + 1, (2,), generator=g).tolist()
            x[i, :, r:r + SQUARE, c:c + SQUARE] = 1.0
    return x, y


def quadrant_means(maps: np.ndarray) -> np.ndarray:
    """N x 4: the mean of each map over the top-left, top-right, bottom-left and bottom-right quadrants."""
    q = HALF
    return np.stack([maps[:, :q, :q].mean((1, 2)), maps[:, :q, q:].mean((1, 2)),
                     maps[:, q:, :q].mean((1, 2)), maps[:, q:, q:].mean((1, 2))], axis=1)


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = inception_mini(num_classes=2, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        x, y = quadrant_images(8, g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    return quadrant_images(16, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def weights_file(trained: torch.nn.Module, tmp_path_factory) -> Path:
    return save_model(trained, tmp_path_factory.mktemp("w") / "quadrant.safetensors", class_names=NAMES,
                      preprocess=PRE)


def test_the_network_learned_the_quadrant(trained, held_out):
    x, y = held_out
    with torch.no_grad():
        accuracy = (trained(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.9, f"the network did not learn the synthetic task (accuracy {accuracy:.2f})"


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_the_map_highlights_the_quadrant_that_decides(trained, held_out, method):
    x, y = held_out
    squares = x[y == 1]
    ex = explain(trained, squares, target=1, method=method)
    assert ex.maps.shape == (len(squares), SIDE, SIDE) and ex.maps.dtype == np.float32
    assert ex.maps.min() >= 0 and ex.maps.max() <= 1
    assert ex.targets == [1] * len(squares)
    means = quadrant_means(ex.maps)
    clearly = (means[:, 0] > 1.2 * means[:, 1:].max(axis=1)).mean()
    assert clearly >= 0.75, f"{method}: top-left clearly highest in only {clearly:.0%} of maps:\n{means}"


def test_top_class_by_default_and_the_model_left_as_found(trained, held_out):
    x = held_out[0]
    trained.train()
    try:
        with torch.inference_mode():   # a caller's inference mode must not stop the gradients
            ex = explain(trained, x[:4])
        assert trained.training
    finally:
        trained.eval()
    with torch.no_grad():
        probs = trained(x[:4]).softmax(1)
    assert ex.targets == probs.argmax(1).tolist()
    assert ex.scores == pytest.approx(probs.max(1).values.tolist(), abs=1e-5)
    assert explain(trained, x[:2], target=[0, 1]).targets == [0, 1]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_unit_maps_at_the_input_size(method):
    torch.manual_seed(0)
    model = inception_mini(num_classes=3).eval()
    ex = explain(model, torch.randn(2, 3, 35, 41), target=2, method=method)
    assert ex.maps.shape == (2, 35, 41) and ex.maps.dtype == np.float32
    assert np.isfinite(ex.maps).all() and ex.maps.min() >= 0 and ex.maps.max() <= 1


def test_one_channel_weights_are_explained_from_files(tmp_path):
    torch.manual_seed(0)
    weights = save_model(inception_mini(num_classes=2, in_chans=1), tmp_path / "gray.safetensors",
                         preprocess=Preprocess(input_size=35, resize_size=40))
    Image.new("RGB", (50, 40), "white").save(tmp_path / "a.png")
    [r] = explain_files([tmp_path / "a.png"], tmp_path / "out", weights=weights, target=np.int64(1),
                        device="cpu")
    assert r["index"] == 1 and r["label"] == "1"
    assert np.load(r["npy"]).shape == (35, 35)
    with Image.open(r["png"]) as im:
        assert im.size == (35, 35) and im.mode == "RGB"


def test_bad_requests_name_the_fix(trained):
    x = torch.zeros(1, 3, SIDE, SIDE)
    with pytest.raises(ValueError, match="choose one of gradcam"):
        explain(trained, x, method="lime")
    with pytest.raises(ValueError, match="out of range; the model has 2 classes"):
        explain(trained, x, target=2)
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        explain(trained, x, target=[0, 1])
    with pytest.raises(ValueError, match="its blocks: conv1"):
        explain(trained, x, layer="Mixed_7c")
    with pytest.raises(ValueError, match="fp32 model"):
        explain(inception_mini(num_classes=2).to(torch.bfloat16), x)


def test_targets_by_index_or_name():
    names = ["0", "1", "10", "2", "Tabby cat"]
    assert resolve_target(None, names, 5) is None
    assert resolve_target("tabby CAT", names, 5) == 4
    assert resolve_target("2", names, 5) == 3        # a class name wins over the index it also spells
    assert resolve_target("4", names, 5) == 4
    assert resolve_target(1, None, 5) == 1
    with pytest.raises(ValueError, match="not a class index or a class name"):
        resolve_target("dog", names, 5)
    with pytest.raises(ValueError, match="out of range"):
        resolve_target("-1", None, 5)


def test_overlay_and_input_view():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 * 2 - 1   # PRE's normalisation
    assert np.array_equal(np.array(input_view(x, PRE)), np.array(img))
    heat = np.linspace(0, 1, 8 * 6, dtype=np.float32).reshape(8, 6)
    assert np.array_equal(np.array(overlay(img, heat, alpha=0.0)), np.array(img))
    full = np.array(overlay(img, np.ones((40, 30), np.float32), alpha=1.0))
    assert (full == colorize(np.ones((1, 1)))[0, 0]).all()
    assert overlay(img, heat).size == img.size              # the map is resized onto the image
    low, high = colorize(np.array([[0.0, 1.0]]))[0]
    assert low[2] > low[0] and high[0] > high[2]           # blue for none, red for the most
    assert output_names([Path("a/x.png"), Path("b/x.png"), Path("y.jpg")]) == ["x", "x-2", "y"]


def test_cli_writes_overlays_and_maps(weights_file, held_out, tmp_path, capsys):
    x, y = held_out
    square = tmp_path / "in" / "square.png"
    square.parent.mkdir()
    input_view(x[y == 1][0], PRE).save(square)
    input_view(x[y == 0][0], PRE).save(tmp_path / "in" / "plain.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = main(["explain", str(square), str(tmp_path / "in" / "plain.png"), str(tmp_path / "in" / "broken.jpg"),
                 "--weights", str(weights_file), "--out", str(out), "--target", "square", "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 1, printed
    assert "broken.jpg: error: " in printed.out and "1 of 3 images failed" in printed.err
    assert "square.png: square [1] " in printed.out and "plain.png: square [1] " in printed.out
    assert sorted(p.name for p in out.iterdir()) == ["plain.npy", "plain.png", "square.npy", "square.png"]
    heat = np.load(out / "square.npy")
    assert heat.shape == (SIDE, SIDE) and heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
    means = quadrant_means(heat[None])[0]
    assert means[0] > means[1:].max(), means
    with Image.open(out / "square.png") as im:
        assert im.size == (SIDE, SIDE) and im.mode == "RGB"


def test_cli_refuses_bad_flags_before_any_work(weights_file, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (SIDE, SIDE), "gray").save(img)
    out = tmp_path / "out"
    base = ["explain", str(img), "--weights", str(weights_file), "--out", str(out)]
    assert main([*base, "--target", "2"]) == 2
    assert "class index out of range; this model has 2 classes" in capsys.readouterr().err
    assert main([*base, "--target", "zebra"]) == 2
    assert "'zebra': not a class index or a class name" in capsys.readouterr().err
    assert main([*base, "--alpha", "1.5"]) == 2
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        main([*base, "--method", "lime"])
    assert e.value.code == 2
    assert main(["explain", str(img), "--weights", str(weights_file), "--out", str(tmp_path)]) == 2
    assert "would overwrite an input image" in capsys.readouterr().err
    assert img.exists()


def test_missing_captum_is_one_line_naming_the_extra(weights_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    img = tmp_path / "a.png"
    Image.new("RGB", (SIDE, SIDE), "gray").save(img)
    assert main(["explain", str(img), "--weights", str(weights_file), "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'inceptionv3[explain]'" in capsys.readouterr().err
