"""The fast inference engines: the fused graph equals the model; bf16, int8 and ONNX Runtime stay close;
unavailable choices and short calibration sets fail with one clear message; exported graphs are cached."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.engine import engine as engine_mod
from inceptionv3.engine import fuse, options, resolve
from inceptionv3.engine.engine import build_engine
from inceptionv3.engine.fuse import fuse_for_inference
from inceptionv3.engine.options import MIN_CALIBRATION_IMAGES
from inceptionv3.engine.resolve import native_bf16
from inceptionv3.weights.preprocess import Preprocess

pytest.importorskip("onnxruntime")


def _model(arch: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "inception_v3":
        config.setdefault("aux_logits", False)
    model = randomize_bn(build_model(arch, num_classes=5, **config)).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.2)     # logits of a useful size; the default head is zero
    return model


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _n_convs(model: torch.nn.Module) -> int:
    return sum(isinstance(c, torch.nn.Conv2d) for c in model.modules())


def _pool(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("arch, config, size", [
    ("inception_v3", {}, 75),
    ("inception_v3", {"count_include_pad": False, "last_pool": "max"}, 107),   # TF pools, the FID graph
    ("inception_mini", {}, 75),
])
def test_fused_graph_equals_model(arch, config, size):
    model = _model(arch, **config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert _rel(fused(x), model(x)) < 1e-4
        assert _rel(_pool(fused, x), _pool(model, x)) < 1e-4
    # fewer convs: every Mixed block's sibling 1x1 convs became one
    assert _n_convs(fused) < _n_convs(model)
    assert not any(isinstance(c, torch.nn.BatchNorm2d) for c in fused.modules())
    # the caller's model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("config", [{}, {"count_include_pad": False, "last_pool": "max"}])
def test_pools_after_convs_equal_model(config):
    # The exported backends' graph: branches kept apart, each 3x3 average pool moved after its 1x1 conv.
    model = _model("inception_v3", **config)
    fused = fuse_for_inference(model, siblings=False)
    pooled = [m for m in fused.modules() if isinstance(m, fuse.PooledConv)]
    # 3 A + 4 C + 2 E blocks; the FID graph's last E block max-pools, which does not commute with a conv
    assert len(pooled) == (8 if config else 9)
    assert all(p.conv.out_channels < p.conv.in_channels for p in pooled)   # pooling the narrow side
    assert _n_convs(fused) == _n_convs(model)
    x = torch.randn(2, 3, 107, 107)
    with torch.no_grad():
        assert _rel(fused(x), model(x)) < 1e-4
        assert _rel(_pool(fused, x), _pool(model, x)) < 1e-4
    plain = fuse_for_inference(model, siblings=False, pool_after_conv=False)
    assert not any(isinstance(m, fuse.PooledConv) for m in plain.modules())


def test_torch_engine_outputs_and_taps():
    model = _model("inception_v3")
    x = torch.randn(3, 3, 75, 75)
    with torch.no_grad():
        want = {"logits": model(x), "pool": _pool(model, x),
                "Mixed_5d": model.forward_intermediates(x, ["Mixed_5d"])["Mixed_5d"].mean(dim=(2, 3))}
    for output, ref in want.items():
        engine = build_engine(model, output=output)
        got = engine(x)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert _rel(got, ref) < 1e-4, output
        assert (engine.output, engine.precision, engine.backend) == (output, "fp32", "torch")
        assert output in engine.describe()
    with pytest.raises(ValueError, match="unknown output"):
        build_engine(model, output="Mixed_9z")
    with pytest.raises(ValueError, match="torch backend only"):
        build_engine(model, output="Mixed_5d", backend="onnxruntime")


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16")
def test_bf16_close_and_agrees_on_clear_cases():
    model = _model("inception_v3")
    x = torch.randn(5, 3, 75, 75)
    with torch.no_grad():
        # A head whose class i points at image i's (centred) features: each image has a clear winner.
        feats = _pool(model, x)
        centred = feats - feats.mean(0)
        model.fc.weight.copy_(centred / centred.norm(dim=1, keepdim=True))
        model.fc.bias.copy_(-model.fc.weight @ feats.mean(0))
        ref = model(x)
    assert torch.equal(ref.argmax(1), torch.arange(5))
    got = build_engine(model, precision="bf16")(x)
    assert got.dtype == torch.float32
    assert _rel(got, ref) < 5e-2
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1 * ref.abs().max()   # margins far above bf16's rounding
    assert clear.any()
    assert torch.equal(got.argmax(1)[clear], ref.argmax(1)[clear])
    assert resolve.resolve_precision("auto", "cpu") == "bf16"


def test_unavailable_precision_and_backend_messages(monkeypatch):
    model = _model("inception_mini")
    monkeypatch.setattr(resolve, "native_bf16", lambda device="cpu": False)
    with pytest.raises(ValueError, match=r"no native bf16.*--precision fp32"):
        build_engine(model, precision="bf16")
    assert resolve.resolve_precision("auto", "cpu") == "fp32"
    want = "openvino" if resolve._installed("openvino") else "onnxruntime"
    with pytest.raises(ValueError, match=f"int8 is not available on the torch backend; use --backend {want}"):
        build_engine(model, precision="int8", backend="torch", calibration=torch.randn(40, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown precision"):
        build_engine(model, precision="fp8")
    with pytest.raises(ValueError, match="unknown backend"):
        build_engine(model, backend="tensorrt")
    real = resolve._installed
    monkeypatch.setattr(resolve, "_installed", lambda b: b != "openvino" and real(b))
    with pytest.raises(ValueError, match=r"needs the openvino package: pip install .*; or use --backend torch"):
        build_engine(model, backend="openvino")


def test_auto_backend_policy(monkeypatch):
    resolve_backend = resolve.resolve_backend
    big = options.AUTO_EXPORT_MIN_IMAGES
    assert resolve_backend("auto", "fp32", "cpu", "logits", images=big - 1) == "torch"   # export would not pay off
    assert resolve_backend("auto", "fp32", "cpu", "Mixed_6e", images=big) == "torch"     # tap: torch only
    monkeypatch.setattr(resolve, "_installed", lambda b: True)
    assert resolve_backend("auto", "int8", "cpu", "logits") == "openvino"                # int8 kernels 3-4x ORT's
    monkeypatch.setattr(resolve, "_installed", lambda b: b != "onnxruntime")
    with pytest.raises(ValueError, match="int8 on OpenVINO is quantized with ONNX Runtime's quantizer"):
        resolve_backend("openvino", "int8", "cpu", "logits")
    monkeypatch.setattr(resolve, "_installed", lambda b: b in ("torch", "onnxruntime"))
    assert resolve_backend("auto", "int8", "cpu", "logits") == "onnxruntime"
    assert resolve_backend("auto", "fp32", "cpu", "pool", images=big) == "onnxruntime"
    assert resolve_backend("auto", "bf16", "cpu", "pool", images=big) == "torch"         # ONNX Runtime has no bf16 here
    monkeypatch.setattr(resolve, "_installed", lambda b: True)
    assert resolve_backend("auto", "bf16", "cpu", "pool", images=big) == "openvino"


def test_onnxruntime_equals_torch_and_reuses_its_cache(monkeypatch, caplog):
    model = _model("inception_mini")
    x = torch.randn(3, 3, 75, 75)
    with torch.no_grad():
        want = {"logits": model(x), "pool": _pool(model, x)}
    for output, ref in want.items():
        engine = build_engine(model, output=output, backend="onnxruntime")
        assert _rel(engine(x), ref) < 1e-4, output
        assert _rel(engine(x[:1]), ref[:1]) < 1e-4       # the batch axis is dynamic
    cached = engine.cache_files[0]
    assert cached.exists() and cached.parent.name == "engines"
    mtime = cached.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of reusing the cache")
    monkeypatch.setattr(engine_mod, "export_onnx", no_export)
    again = build_engine(model, output="pool", backend="onnxruntime")
    assert _rel(again(x), want["pool"]) < 1e-4
    assert again.cache_files == [cached] and cached.stat().st_mtime_ns == mtime
    # other weights are another graph: the cache key follows them
    other = _model("inception_mini")
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(AssertionError, match="exported again"):
        build_engine(other, output="pool", backend="onnxruntime")(x)

    # A damaged cached graph (truncated, emptied, altered) fails its recorded digest: a warning names it
    # and it is built again, never a traceback. The rebuild is the real code path; only the exporter's
    # seconds are spared (it writes what it wrote the first time).
    assert cached.with_name(cached.name + ".sha256").read_text().strip() == engine_mod.file_sha256(cached)
    good, exports = cached.read_bytes(), []
    monkeypatch.setattr(engine_mod, "export_onnx", lambda *a: (exports.append(a), a[-1].write_bytes(good)))
    for damage in (lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b[:-1] + bytes([b[-1] ^ 1])):
        cached.write_bytes(damage(cached.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert _rel(build_engine(model, output="pool", backend="onnxruntime")(x), want["pool"]) < 1e-4
        assert str(cached) in caplog.text and "building it again" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_engine(model, output="pool", backend="onnxruntime")(x)
    assert "building it again" not in caplog.text and len(exports) == 3   # the rebuilt file passes its check


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_runs_and_stays_close_on_calibrated_input(backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    model = _model("inception_mini")
    g = torch.Generator().manual_seed(1)
    calibration = torch.randn(MIN_CALIBRATION_IMAGES, 3, 48, 48, generator=g)
    engine = build_engine(model, precision="int8", backend=backend, calibration=calibration)
    assert (engine.backend, engine.precision) == (backend, "int8")
    x = calibration[:8]
    with torch.no_grad():
        ref = model(x)
    got = engine(x)
    assert got.shape == ref.shape
    assert _rel(got, ref) < 0.1
    assert float(torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1]) > 0.99
    assert engine.cache_files[-1].name.endswith(".int8.onnx")


def test_int8_calibration_too_few(tmp_path):
    from inceptionv3.engine.inputs import calibration_images
    from inceptionv3.weights.io import save_model
    from inceptionv3.weights.load import load_model

    model = _model("inception_mini")
    with pytest.raises(ValueError, match=f"int8 needs calibration images: pass at least {MIN_CALIBRATION_IMAGES}"):
        build_engine(model, precision="int8", backend="auto")
    with pytest.raises(ValueError, match=f"3 images; at least {MIN_CALIBRATION_IMAGES} are needed"):
        build_engine(model, precision="int8", backend="auto", calibration=torch.randn(3, 3, 48, 48))
    # from a folder, as the CLI's --calibration DIR reads it
    weights = tmp_path / "m.safetensors"
    save_model(model, weights, class_names=list("abcde"), preprocess=Preprocess(input_size=48, resize_size=48))
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match=f"--calibration .*calib: 3 usable images.*at least {MIN_CALIBRATION_IMAGES}"):
        calibration_images(load_model(weights), [folder], workers=0)


def test_predict_cli_precision_flags(tmp_path, capsys):
    from inceptionv3.cli.main import main
    from inceptionv3.weights.io import save_model

    model = _model("inception_v3")
    weights = tmp_path / "m.safetensors"
    save_model(model, weights, class_names=list("abcde"), preprocess=Preprocess(input_size=75, resize_size=75))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    results = {}
    for precision in ("fp32", "bf16") if native_bf16("cpu") else ("fp32",):
        code = main(["predict", str(folder), "--weights", str(weights), "--format", "json", "--workers", "0",
                     "--precision", precision, "--backend", "torch", "--no-progress"])
        assert code == 0
        results[precision] = json.loads(capsys.readouterr().out)
    assert len(results["fp32"]) == 4 and all("predictions" in r for r in results["fp32"])
    code = main(["predict", str(folder), "--weights", str(weights), "--precision", "int8",
                 "--calibration", str(folder), "--workers", "0", "--no-progress"])
    assert code == 2
    assert f"at least {MIN_CALIBRATION_IMAGES}" in capsys.readouterr().err


def test_openvino_equals_torch():
    pytest.importorskip("openvino")
    model = _model("inception_mini")
    x = torch.randn(5, 3, 75, 75)
    with torch.no_grad():
        ref = model(x)
    engine = build_engine(model, backend="openvino")
    assert "openvino fp32" in engine.describe()
    assert _rel(engine(x[:2]), ref[:2]) < 1e-4
    # Two threads: one stream each, the batch split in equal parts; 5 images are padded to 2 x 3, 1 image
    # runs alone. Outputs come back in input order, padding dropped.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = build_engine(model, backend="openvino")
        for n in (5, 1, 4):
            got = engine(x[:n])
            assert got.shape == (n, 5) and _rel(got, ref[:n]) < 1e-4
    finally:
        torch.set_num_threads(threads)


def test_openvino_runs_pools_after_convs():
    pytest.importorskip("openvino")
    model = _model("inception_v3")
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        ref = model(x)
    engine = build_engine(model, backend="openvino")
    assert "avg pools after 1x1 convs" in engine.describe()
    assert _rel(engine(x), ref) < 1e-4
    # ONNX Runtime fp32 keeps the plain BN-folded graph (it ran the moved pools slower), and so does
    # OpenVINO int8 (its int8 kernels disagreed with fp32 on the moved pools); ONNX Runtime int8 moves them.
    # Engines export on their first call, so these choices cost nothing to check here.
    assert "avg pools" not in build_engine(model, backend="onnxruntime").describe()
    calibration = torch.randn(MIN_CALIBRATION_IMAGES, 3, 75, 75)
    int8 = {b: build_engine(model, precision="int8", backend=b, calibration=calibration).describe()
            for b in ("openvino", "onnxruntime")}
    assert "avg pools" not in int8["openvino"] and "avg pools after 1x1 convs" in int8["onnxruntime"]


def test_features_and_evaluate_run_the_engine(tmp_path):
    from inceptionv3.tasks.evaluate import evaluate, evaluate_model
    from inceptionv3.tasks.features import extract_features
    from inceptionv3.weights.io import save_model
    from inceptionv3.weights.load import load_model

    torch.manual_seed(0)
    model = randomize_bn(build_model("inception_mini", num_classes=10)).eval()
    weights = save_model(model, tmp_path / "m.safetensors", class_names=[str(d) for d in range(10)],
                         preprocess=Preprocess(input_size=32, resize_size=32))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")

    # features: the fp32 engine equals the plain model's pooled features; bf16 stays close
    plain = load_model(weights)
    from inceptionv3.data.decode import load_image
    from inceptionv3.data.transforms import eval_transform
    x = torch.stack([eval_transform(plain.meta.preprocess)(load_image(p)) for p in sorted(folder.iterdir())])
    with torch.no_grad():
        want = _pool(plain, x)
    fp32 = extract_features([folder], weights=weights, workers=0, device="cpu", backend="torch")
    assert _rel(torch.from_numpy(fp32.features), want) < 1e-5
    if native_bf16("cpu"):
        bf16 = extract_features([folder], weights=weights, workers=0, device="cpu", precision="bf16")
        assert 0 < _rel(torch.from_numpy(bf16.features), want) < 0.05

    # evaluate: the engine's counts equal the plain model's on the same loader
    from inceptionv3.data import datasets, loaders
    dataset = datasets.load_labeled("digits", "val", eval_transform(plain.meta.preprocess), mode="RGB")
    loader = loaders.labeled_loader(dataset, batch_size=150, shuffle=False, workers=0)
    ref = evaluate_model(plain, loader, 10)
    got = evaluate("digits", str(weights), batch_size=150, workers=0, device="cpu", backend="torch")
    assert "| torch fp32 on cpu |" in got["engine"]
    np.testing.assert_array_equal(got["confusion"], ref["confusion"])
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="int8 needs calibration"):
        evaluate("digits", str(weights), workers=0, device="cpu", precision="int8")


def test_engine_line_says_what_was_fused_and_is_logged_by_rank_0_only(monkeypatch, caplog):
    mini = build_model("inception_mini", num_classes=3).eval()       # the seed network has no batch norm
    assert not fuse.has_batch_norm(mini)
    with caplog.at_level(logging.INFO, logger="inceptionv3.engine.engine"):
        line = build_engine(mini).describe()
    assert "BN" not in line and "engine: " + line.split(", built")[0] in caplog.text
    assert "fused BN" in build_engine(_model("inception_v3")).describe()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inceptionv3.engine.engine"):
        build_engine(mini)
    assert "engine:" not in caplog.text     # under torchrun rank 0 says it once
