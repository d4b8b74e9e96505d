"""Training: learns the digits, writes loadable checkpoints, stops on NaN loss, survives a bad image."""
from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from inceptionv3.model import build_model
from inceptionv3.train import (
    NonFiniteLossError,
    TrainConfig,
    augmentation_for,
    compute_loss,
    init_model,
    load_checkpoint,
    param_groups,
    preprocess_for,
    resolve_aux,
    train,
)
from inceptionv3.weights import load_model, read_state_dict, save_model

train_mod = importlib.import_module("inceptionv3.train")  # the module; the package exports the function

torch.set_num_threads(1)

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    # The real network at its smallest size on 400 of the 1,347 training digits, 2 epochs (50 steps):
    # about 65-68% held-out top-1 over seeds 0-2, in ~30 s on one core.
    cfg = TrainConfig(data="digits", out=str(tmp_path_factory.mktemp("run")), arch="inception_v3",
                      image_size=75, epochs=2, batch_size=16, limit=400, workers=0, threads=1)
    return cfg, train(cfg, progress=False)


def test_learns_digits(digits_run):
    cfg, result = digits_run
    assert result["best_acc1"] >= 50.0, result["history"]   # chance is 10%
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["best_acc1"] == max(h["val_acc1"] for h in result["history"])
    lines = (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result["history"]
    assert TrainConfig.load(cfg.out) == cfg


def test_checkpoints_load(digits_run):
    cfg, result = digits_run
    model = load_model(result["best_path"])
    assert model.meta.class_names == DIGITS
    assert model.meta.preprocess == preprocess_for(cfg)
    assert model.arch == "inception_v3" and model.AuxLogits is None
    _, meta = read_state_dict(result["best_path"])
    best_epoch = max(result["history"], key=lambda h: h["val_acc1"])
    assert meta["extra"]["epoch"] == best_epoch["epoch"]
    assert meta["extra"]["acc1"] == pytest.approx(result["best_acc1"])

    ckpt = load_checkpoint(result["last_path"])
    assert ckpt["epoch"] == 2 and ckpt["class_names"] == DIGITS
    assert TrainConfig.from_dict(ckpt["config"]) == cfg
    assert {"model", "optimizer", "scheduler"} <= set(ckpt)
    fresh = build_model("inception_v3", num_classes=10, aux_logits=False)
    fresh.load_state_dict(ckpt["model"])
    assert load_model(result["last_path"]).meta.class_names == DIGITS   # last.pt is also a weights file


def test_evaluate_matches_training(digits_run):
    from inceptionv3.evaluate import evaluate

    _, result = digits_run
    r = evaluate("digits", result["best_path"], workers=0, device="cpu", batch_size=150)
    assert r["top1"] == pytest.approx(result["best_acc1"])


def _mini_cfg(tmp_path, **kw) -> TrainConfig:
    base = {"data": "digits", "out": str(tmp_path / "run"), "arch": "inception_mini", "image_size": 32,
            "epochs": 2, "batch_size": 16, "limit": 64, "workers": 0, "threads": 1}
    return TrainConfig(**{**base, **kw})


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = _mini_cfg(tmp_path)
    calls = {"n": 0}
    real = train_mod.compute_loss

    def loss_that_diverges(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 6 else loss   # epoch 1 has 4 steps; 6 is in epoch 2

    monkeypatch.setattr(train_mod, "compute_loss", loss_that_diverges)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 2 \(lr [0-9.e+-]+\)"):
        train(cfg, progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert load_model(tmp_path / "run" / "best.safetensors").meta.class_names == DIGITS


def _write_folder(root, n_per_class: int = 10):
    rng = np.random.default_rng(0)
    for name, channel in (("blue", 2), ("red", 0)):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 60, size=(24, 24, 3), dtype=np.uint8)
            pixels[..., channel] = 200
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")


def test_image_folder_counts_a_corrupt_image(tmp_path, caplog):
    data = tmp_path / "data"
    _write_folder(data)
    cfg = _mini_cfg(tmp_path, data=str(data), epochs=1, batch_size=8, limit=None, val_fraction=0.25)
    with caplog.at_level(logging.INFO, logger="inceptionv3"):
        result = train(cfg, progress=False)
    assert result["history"][0]["skipped"] == 1
    assert any("skipped 1 bad images" in r.getMessage() for r in caplog.records)
    assert any("broken.png" in r.getMessage() for r in caplog.records)   # the data module names the file
    assert load_model(result["best_path"]).meta.class_names == ["blue", "red"]


def test_resolve_aux():
    assert resolve_aux(TrainConfig(data="digits", image_size=75)) is False
    assert resolve_aux(TrainConfig(data="digits", image_size=299)) is True
    assert resolve_aux(TrainConfig(data="digits", image_size=299, aux_logits=False)) is False
    with pytest.raises(ValueError, match="299"):
        resolve_aux(TrainConfig(data="digits", image_size=75, aux_logits=True))
    with pytest.raises(ValueError, match="no aux head"):
        resolve_aux(TrainConfig(data="digits", arch="inception_mini", image_size=299, aux_logits=True))


def test_compute_loss_adds_weighted_aux():
    torch.manual_seed(0)
    logits, aux, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    cfg = TrainConfig(data="digits")
    ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert compute_loss(logits, None, y, cfg).item() == pytest.approx(ce.item())
    expected = ce + 0.4 * F.cross_entropy(aux, y, label_smoothing=0.1)
    assert compute_loss(logits, aux, y, cfg).item() == pytest.approx(expected.item())


def test_no_weight_decay_on_bn_and_bias():
    model = build_model("inception_v3", num_classes=10, aux_logits=False, init_weights=False)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    bn_weight = model.Conv2d_1a_3x3.bn.weight
    assert any(p is bn_weight for p in no_decay["params"])
    assert any(p is model.fc.bias for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_digits_are_never_flipped():
    def kinds(t):
        return {type(s) for s in t.transforms}

    digits_cfg = TrainConfig(data="digits")
    digits = augmentation_for(digits_cfg, preprocess_for(digits_cfg))
    assert v2.RandomHorizontalFlip not in kinds(digits)
    crop = next(s for s in digits.transforms if isinstance(s, v2.RandomResizedCrop))
    assert crop.scale == (0.85, 1.0)
    folder_cfg = TrainConfig(data="some/folder")
    assert v2.RandomHorizontalFlip in kinds(augmentation_for(folder_cfg, preprocess_for(folder_cfg)))
    assert preprocess_for(digits_cfg).resize_size == 75 and preprocess_for(folder_cfg).resize_size == 86


def test_init_from_weights(tmp_path):
    torch.manual_seed(0)
    source = build_model("inception_mini", num_classes=10)
    path = save_model(source, tmp_path / "digits.safetensors", class_names=DIGITS)

    same = init_model(_mini_cfg(tmp_path, weights=str(path)), DIGITS, aux=False)
    for k, v in source.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k   # same classes: everything kept

    other = init_model(_mini_cfg(tmp_path, weights=str(path)), ["cat", "dog", "eel"], aux=False)
    assert other.fc.out_features == 3
    assert torch.equal(other.conv1.weight, source.conv1.weight)   # backbone kept, classifier new


def test_config_round_trip_and_validation():
    cfg = TrainConfig(data="digits", limit=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1.0})
    with pytest.raises(ValueError, match="epochs=0"):
        TrainConfig(data="digits", epochs=0)
