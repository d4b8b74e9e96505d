"""Training: learns the digits, writes loadable checkpoints, stops on NaN loss, survives a bad image."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from inceptionv3.models.builder import build_model
from inceptionv3.training import config, loop, optim, setup
from inceptionv3.training.config import TrainConfig
from inceptionv3.training.loop import NonFiniteLossError, compute_loss
from inceptionv3.training.optim import param_groups
from inceptionv3.training.run import train
from inceptionv3.training.setup import augmentation_for, init_model, preprocess_for, resolve_aux
from inceptionv3.training.state import load_checkpoint
from inceptionv3.weights.io import read_state_dict, save_model
from inceptionv3.weights.load import load_model

torch.set_num_threads(1)

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    # The real network at its smallest size on 400 of the 1,347 training digits, 2 epochs (50 steps):
    # about 65-68% held-out top-1 over seeds 0-2 (chance: 10%).
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
    from inceptionv3.tasks.evaluate import evaluate

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
    real = loop.compute_loss

    def loss_that_diverges(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 6 else loss   # epoch 1 has 4 steps; 6 is in epoch 2

    monkeypatch.setattr(loop, "compute_loss", loss_that_diverges)
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
    assert any("skipped 1 bad images (bad_images.txt)" in r.getMessage() for r in caplog.records)
    assert any("broken.png" in r.getMessage() for r in caplog.records)   # the data module names the file
    lines = (tmp_path / "run" / "bad_images.txt").read_text().splitlines()
    assert lines[0] == "epoch\tsplit\tpath\treason" and len(lines) == 2
    epoch, split, path, reason = lines[1].split("\t")
    assert (epoch, Path(path).name, reason) == ("1", "broken.png", "not an image PIL can read")
    assert split in ("train", "val")
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
    with pytest.raises(ValueError, match=r"classifier does not fit the data \(the file has 10 classes "
                                         r"\[0, 1, 2, 3, 4 \(\+5 more\)\]; the data has "
                                         r"3 classes \[cat, dog, eel\]\)\. Drop --strict"):
        init_model(_mini_cfg(tmp_path, weights=str(path), strict=True), ["cat", "dog", "eel"], aux=False)
    init_model(_mini_cfg(tmp_path, weights=str(path), strict=True), DIGITS, aux=False)   # fits: no error


@pytest.mark.parametrize("layout, message", [
    ("missing", "no such folder"),
    ("empty", "is empty"),
    ("no_images", r"dog: class folder has no images"),
])
def test_train_command_names_the_bad_data_folder(tmp_path, capsys, layout, message):
    from inceptionv3.cli.main import main

    data = tmp_path / "data"
    if layout != "missing":
        data.mkdir()
    if layout == "no_images":
        _write_folder(data / "cat")   # cat/blue, cat/red ... a class folder with images in sub-folders
        (data / "dog").mkdir()
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--arch", "inception_mini",
                 "--workers", "0", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("inceptionv3 train: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_config_round_trip_and_validation():
    cfg = TrainConfig(data="digits", limit=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1.0})
    with pytest.raises(ValueError, match="--epochs 0: must be an integer >= 1"):
        TrainConfig(data="digits", epochs=0)


def test_freeze_until_trains_only_later_blocks(tmp_path):
    cfg = _mini_cfg(tmp_path, epochs=1, freeze_until="conv5")
    torch.manual_seed(cfg.seed)
    start = init_model(cfg, DIGITS, aux=False).state_dict()   # what train() builds first, from the same seed
    train(cfg, progress=False)
    end = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for k in start:
        frozen = k.split(".")[0] in ("conv1", "conv2", "conv3", "conv4", "conv5")
        assert torch.equal(start[k], end[k]) == frozen, k


def test_frozen_blocks_keep_bn_in_eval_mode():
    model = build_model("inception_v3", num_classes=10, aux_logits=False, init_weights=False)
    cfg = TrainConfig(data="digits", freeze_until="Mixed_5b")
    assert setup.freeze(model, "Mixed_5b")[-2:] == ["Conv2d_4a_3x3", "Mixed_5b"]
    setup.set_train_mode(model, cfg)
    assert not model.Mixed_5b.training and not model.Conv2d_1a_3x3.bn.training
    assert model.Mixed_5c.training and model.fc.training
    assert not any(p.requires_grad for p in model.Mixed_5b.parameters())
    assert all(p.requires_grad for p in model.Mixed_5c.parameters()) and model.fc.weight.requires_grad
    with pytest.raises(ValueError, match="no such block; one of Conv2d_1a_3x3"):
        setup.freeze(model, "Mixed_9z")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_and_channels_last(tmp_path, amp):
    cfg = _mini_cfg(tmp_path, epochs=1, amp=amp, channels_last=True, limit=32)   # fp16 is slow on CPUs
    result = train(cfg, progress=False)
    assert np.isfinite(result["history"][0]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())   # fp32 master weights
    assert load_model(result["best_path"]).meta.class_names == DIGITS
    assert (ckpt["scaler"] is not None) == (amp == "fp16")   # fp16's gradient scaler is checkpointed


def test_recipes_fill_defaults_and_flags_win():
    paper = config.resolve_recipe(TrainConfig(data="digits", recipe="paper", batch_size=64))
    assert (paper.optimizer, paper.schedule, paper.image_size) == ("rmsprop", "step", 299)
    assert (paper.crop_scale, paper.ema_decay) == (0.08, 0.9999)
    assert paper.lr == pytest.approx(0.045 * 64 / 1600) and paper.weight_decay == 4e-5
    assert resolve_aux(paper) is True                                    # 299 px: the aux head trains
    mine = config.resolve_recipe(TrainConfig(data="digits", recipe="paper", lr=0.01, optimizer="sgd"))
    assert (mine.lr, mine.optimizer, mine.schedule) == (0.01, "sgd", "step")
    plain = TrainConfig(data="digits")
    assert config.resolve_recipe(plain) is plain
    probe = config.resolve_recipe(TrainConfig(data="digits", recipe="linear-probe"))
    assert probe.freeze_until == "all"


def test_paper_recipe_says_when_its_scaled_lr_is_small(tmp_path, caplog):
    def messages(**kw) -> list[str]:
        caplog.clear()
        cfg = TrainConfig(data=str(tmp_path / "missing"), recipe="paper", batch_size=32, out=str(tmp_path), **kw)
        with caplog.at_level(logging.INFO, logger="inceptionv3"), pytest.raises(ValueError, match="no such folder"):
            train(cfg, progress=False)          # the folder is missing: the run stops after the note
        return [r.getMessage() for r in caplog.records if "recipe paper" in r.getMessage()]

    assert messages() == [("recipe paper: lr 0.045 x 32 / 1600 = 0.0009 (scaled to the global batch); on a "
                           "small dataset this learns slowly: --lr 0.045 is the paper's rate for a batch of 32")]
    assert messages(lr=0.045) == []                                       # an explicit --lr: nothing to say


def test_paper_optimizer_and_step_schedule():
    model = build_model("inception_mini", num_classes=10)
    cfg = config.resolve_recipe(TrainConfig(data="digits", recipe="paper", batch_size=1600, epochs=6))
    optimizer, scheduler = optim.build_optimizer(model, cfg, steps_per_epoch=10)
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["alpha"] == 0.9 and optimizer.defaults["eps"] == 1.0
    assert optimizer.defaults["momentum"] == 0.9
    lrs = []
    for _ in range(60):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.045 / 20) and lrs[19] == pytest.approx(0.045)   # 2-epoch warm-up
    assert lrs[20] == pytest.approx(0.045 * 0.94) and lrs[40] == pytest.approx(0.045 * 0.94 ** 2)


def test_finetune_gives_the_backbone_a_lower_lr():
    model = build_model("inception_mini", num_classes=10)
    cfg = config.resolve_recipe(TrainConfig(data="digits", recipe="finetune", weights="start.safetensors"))
    optimizer, _ = optim.build_optimizer(model, cfg, steps_per_epoch=10)
    assert isinstance(optimizer, torch.optim.SGD)
    head = {id(p) for p in model.fc.parameters()}
    for g in optimizer.param_groups:
        is_head = all(id(p) in head for p in g["params"])
        assert g["initial_lr"] == pytest.approx(0.01 if is_head else 0.001)


def test_linear_probe_trains_only_the_head(tmp_path):
    cfg = _mini_cfg(tmp_path, epochs=1, recipe="linear-probe")
    torch.manual_seed(cfg.seed)
    start = init_model(cfg, DIGITS, aux=False).state_dict()
    result = train(cfg, progress=False)
    end = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert [k for k in start if not torch.equal(start[k], end[k])] == ["fc.weight", "fc.bias"]
    assert TrainConfig.from_dict(result["config"]).freeze_until == "all"   # the resolved config is saved
    assert TrainConfig.load(cfg.out).optimizer == "adamw"


def test_ema_is_evaluated_and_saved_as_best(tmp_path):
    cfg = _mini_cfg(tmp_path, epochs=1, ema_decay=0.5)
    result = train(cfg, progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["ema"]["updates"] == 4
    best, _ = read_state_dict(result["best_path"])
    for k, v in ckpt["ema"]["model"].items():
        assert torch.equal(best[k], v), k
    assert any(not torch.equal(ckpt["model"][k], v) for k, v in ckpt["ema"]["model"].items())


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    # No dropout (its masks are drawn per micro-batch); inception_mini has no BN; fp32 (bf16 rounds each
    # micro-batch's gradient on its own).
    whole = train(_mini_cfg(tmp_path / "a", epochs=1, dropout=0.0, amp="off"), progress=False)
    parts = train(_mini_cfg(tmp_path / "b", epochs=1, dropout=0.0, accum_steps=4, amp="off"), progress=False)
    a = load_checkpoint(tmp_path / "a" / "run" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    assert parts["history"][0]["train_loss"] == pytest.approx(whole["history"][0]["train_loss"], abs=1e-5)
    with pytest.raises(ValueError, match="divisible by --accum-steps 3"):
        train(_mini_cfg(tmp_path / "c", accum_steps=3), progress=False)


def test_balanced_sampling_runs(tmp_path):
    result = train(_mini_cfg(tmp_path, epochs=1, balanced=True), progress=False)
    assert result["history"][0]["train_loss"] > 0 and TrainConfig.load(tmp_path / "run").balanced


def test_amp_auto_is_bf16_only_where_native(monkeypatch):
    from inceptionv3.engine import resolve

    cfg = TrainConfig(data="digits")
    assert cfg.amp == "auto" and cfg.channels_last   # the defaults
    cpu = torch.device("cpu")
    # One bf16 detection: --amp auto (training) and --precision auto (inference) agree on every machine.
    assert (loop.resolve_amp("auto", cpu) == "bf16") == (resolve.resolve_precision("auto", cpu) == "bf16")
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": False)
    assert loop.resolve_amp("auto", cpu) == "off" and resolve.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": True)
    assert loop.resolve_amp("auto", cpu) == "bf16" and resolve.resolve_precision("auto", cpu) == "bf16"
    assert loop.resolve_amp("off", cpu) == "off" and loop.resolve_amp("fp16", cpu) == "fp16"
    with loop.autocast(cpu, "auto"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_grad_checkpointing_same_loss_gradients_and_bn_stats():
    import copy

    torch.manual_seed(0)
    plain = build_model("inception_v3", num_classes=5, aux_logits=False)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x, y = torch.randn(2, 3, 75, 75), torch.tensor([1, 3])
    saved = {}
    for name, net in (("plain", plain), ("ckpt", ckpt)):
        net.train()
        torch.manual_seed(1)   # the same dropout mask for both
        numel = []
        # Tensors autograd keeps for the backward pass (a checkpointed block keeps only its input).
        with torch.autograd.graph.saved_tensors_hooks(lambda t, keep=numel.append: keep(t.numel()) or t,
                                                      lambda t: t):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        saved[name] = (loss.item(), sum(numel))
    assert saved["ckpt"][0] == pytest.approx(saved["plain"][0], abs=1e-6)
    assert saved["ckpt"][1] < saved["plain"][1] / 2
    for (k, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-5, msg=k)
    for k, v in plain.state_dict().items():   # BN running stats: the batch is counted once, not twice
        torch.testing.assert_close(ckpt.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)
    assert torch.jit.script(ckpt.eval())(x).shape == (2, 5)   # TorchScript export still works
    with pytest.raises(ValueError, match="no Mixed blocks"):
        setup.prepare_model(build_model("inception_mini", num_classes=3),
                                TrainConfig(data="digits", arch="inception_mini", grad_checkpointing=True),
                                torch.device("cpu"))


def test_compile_wires_torch_compile(tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    kw = {"epochs": 1, "dropout": 0.0, "amp": "off"}
    compiled = train(_mini_cfg(tmp_path / "c", compile=True, compile_backend="eager", **kw), progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1   # the forward went through dynamo
    eager = train(_mini_cfg(tmp_path / "e", **kw), progress=False)
    a = load_checkpoint(tmp_path / "c" / "run" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "e" / "run" / "last.pt")["model"]
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    assert compiled["history"][0]["val_acc1"] == eager["history"][0]["val_acc1"]
    torch._dynamo.reset()


def test_linear_probe_computes_backbone_features_once(tmp_path, monkeypatch):
    from inceptionv3.models.mini import InceptionMini

    images = {"n": 0}
    real = InceptionMini.forward_features

    def counting(self, x):
        images["n"] += x.shape[0]
        return real(self, x)

    monkeypatch.setattr(InceptionMini, "forward_features", counting)
    kw = {"epochs": 2, "recipe": "linear-probe", "amp": "off"}
    uncached = train(_mini_cfg(tmp_path / "u", cache_features=False, **kw), progress=False)
    per_run, images["n"] = images["n"], 0
    cached = train(_mini_cfg(tmp_path / "c", **kw), progress=False)
    # 64 training + 450 held-out digits: through the backbone once, instead of once per epoch.
    assert images["n"] == 64 + 450 and per_run == 2 * (64 + 450)
    a = load_checkpoint(tmp_path / "u" / "run" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "c" / "run" / "last.pt")["model"]
    torch.manual_seed(0)   # train() builds its network from the same seed
    assert not torch.equal(a["fc.weight"], init_model(_mini_cfg(tmp_path), DIGITS, aux=False).fc.weight)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    assert [h["val_acc1"] for h in cached["history"]] == [h["val_acc1"] for h in uncached["history"]]
    assert load_model(cached["best_path"]).meta.class_names == DIGITS


def test_tensorboard_events_and_confusion_matrix(digits_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, result = digits_run
    events = EventAccumulator(str(Path(cfg.out) / "tensorboard")).Reload()
    top1 = events.Scalars("top1/val")
    assert [e.step for e in top1] == [1, 2]
    assert [e.value for e in top1] == pytest.approx([h["val_acc1"] for h in result["history"]])
    assert {"loss/train", "loss/val", "lr"} <= set(events.Tags()["scalars"])
    saved = json.loads((Path(cfg.out) / "confusion.json").read_text())
    best = max(result["history"], key=lambda h: h["val_acc1"])
    matrix = np.array(saved["matrix"])
    assert saved["epoch"] == best["epoch"] and saved["class_names"] == DIGITS and matrix.sum() == 450
    assert 100 * np.trace(matrix) / matrix.sum() == pytest.approx(result["best_acc1"])
