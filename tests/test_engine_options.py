"""One engine for every path that runs the network: ``EngineOptions`` travels from the command line's flags
to the engine, the metrics' FeatureNet is built by ``build_engine``, one ONNX exporter serves every file,
and the engine's modules import in one direction only."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.bench import harness
from inceptionv3.cli.main import main
from inceptionv3.engine import engine as engine_mod
from inceptionv3.engine import onnx as onnx_mod
from inceptionv3.engine import runner
from inceptionv3.engine.options import EngineOptions, engine_options
from inceptionv3.metrics import featurenet
from inceptionv3.models.builder import FID_GRAPH
from inceptionv3.tasks import evaluate as evaluate_mod
from inceptionv3.tasks import export as export_mod
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_options")
    torch.manual_seed(0)
    model = randomize_bn(build_model("inception_mini", num_classes=3)).eval()
    weights = save_model(model, root / "mini.safetensors", class_names=["a", "b", "c"],
                         preprocess=Preprocess(input_size=32, resize_size=36))
    folder = root / "imgs"
    rng = np.random.default_rng(0)
    for c in "abc":
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    return weights, folder


@pytest.fixture
def built(monkeypatch):
    """Every engine built, as (output, options): build_engine seen from each module that calls it."""
    seen: list[tuple[str, EngineOptions]] = []
    real = engine_mod.build_engine

    def spy(model, output="logits", options=None, **kwargs):
        seen.append((output, engine_options(options or engine_mod.DIRECT)))
        return real(model, output, options, **kwargs)
    for module in (runner, evaluate_mod, featurenet):
        monkeypatch.setattr(module, "build_engine", spy)
    return seen


def test_options_fold_keywords_in_one_place():
    base = EngineOptions(batch_size=5, backend="torch")
    assert engine_options(None) == EngineOptions()
    assert engine_options(base, batch_size=None, precision=None) is base        # None: not given
    assert engine_options(base, batch_size=2) == EngineOptions(batch_size=2, backend="torch")
    assert EngineOptions(calibration="calib/").calibration == ("calib/",)
    assert EngineOptions(device=torch.device("cpu")).device == "cpu"
    with pytest.raises(TypeError, match="unknown engine setting"):
        engine_options(base, batchsize=2)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        EngineOptions(precision="fp8")
    with pytest.raises(ValueError, match="--batch-size must be an integer >= 1"):
        EngineOptions(batch_size=0)
    with pytest.raises(ValueError, match="--threads must be an integer >= 1"):
        EngineOptions(threads=0)


def test_cli_flags_reach_the_engine(job, built, tmp_path, capsys):
    weights, folder = job
    common = ["--weights", str(weights), "--workers", "0", "--device", "cpu", "--no-progress"]
    try:
        assert main(["predict", str(folder), *common, "--batch-size", "4", "--backend", "torch", "--threads", "2",
                     "--format", "json"]) == 0
        assert torch.get_num_threads() == 2          # --threads is the compute budget the run used
    finally:
        torch.set_num_threads(1)
    assert main(["features", str(folder), *common, "--batch-size", "3", "--layer", "logits",
                 "--out", str(tmp_path / "f.npz")]) == 0
    assert main(["evaluate", str(folder), "--weights", str(weights), "--split", "train", "--workers", "0",
                 "--device", "cpu", "--batch-size", "2", "--format", "json"]) == 0
    capsys.readouterr()
    (p_out, p_opts), (f_out, f_opts), (e_out, e_opts) = built
    assert (p_out, p_opts.batch_size, p_opts.backend, p_opts.threads, p_opts.workers) == ("logits", 4, "torch", 2, 0)
    assert (f_out, f_opts.batch_size, f_opts.device, f_opts.precision) == ("logits", 3, "cpu", "fp32")
    assert (e_out, e_opts.batch_size, e_opts.progress) == ("logits", 2, False)


def test_metric_flags_reach_the_feature_net(built, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "fid.pth"     # a bare FID-graph state dict, as pytorch-fid's file is
    torch.save(build_model("inception_v3", init_weights=False, **FID_GRAPH).state_dict(), weights)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["stats", str(folder), "--weights", str(weights), "--dims", "64", "--batch-size", "2",
                 "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    assert "3 images" in capsys.readouterr().out
    [(output, options)] = built
    assert (output, options.batch_size, options.device, options.backend, options.precision) == \
        ("maxpool1", 2, "cpu", "auto", "fp32")


def test_keywords_and_options_together(job, built):
    from inceptionv3.tasks.predict import predict

    weights, folder = job
    options = EngineOptions(batch_size=5, backend="torch", device="cpu", workers=0)
    results = predict([folder], weights=str(weights), batch_size=2, options=options)
    assert len(results) == 6 and all("predictions" in r for r in results)
    assert built[0][1] == EngineOptions(batch_size=2, backend="torch", device="cpu", workers=0)
    evaluate_mod.evaluate(str(folder), str(weights), split="train", workers=0, device="cpu")
    assert built[1][1].batch_size == evaluate_mod.EVALUATE_OPTIONS.batch_size


def test_evaluate_model_runs_a_module_as_evaluate_does(job):
    from inceptionv3.data.datasets import load_labeled
    from inceptionv3.data.loaders import labeled_loader
    from inceptionv3.data.transforms import eval_transform
    from inceptionv3.weights.load import load_model

    weights, folder = job
    model = load_model(weights)
    model.train()
    loader = labeled_loader(load_labeled(str(folder), "train", eval_transform(model.meta.preprocess)),
                            batch_size=4, shuffle=False, workers=0)
    got = evaluate_mod.evaluate_model(model, loader, 3, "cpu", options=EngineOptions(backend="torch"))
    want = evaluate_mod.evaluate(str(folder), str(weights), split="train", workers=0, device="cpu",
                                 backend="torch")
    assert model.training                                  # the module itself is left as it was
    np.testing.assert_array_equal(got["confusion"], want["confusion"])
    assert (got["top1"], got["n"]) == (want["top1"], want["n"]) and got["loss"] == pytest.approx(want["loss"])


def test_featurenet_runs_through_build_engine(built):
    torch.manual_seed(0)
    model = randomize_bn(build_model("inception_v3", init_weights=False, **FID_GRAPH)).eval()
    net = featurenet.FeatureNet(model, "pytorch-fid", 192, "cpu")
    assert built == []                  # built on first use, when the job's size is known
    assert net.engine.backend == "torch" and "fused" in net.engine.describe()
    assert [(o, opts.backend, opts.precision) for o, opts in built] == [("maxpool2", "auto", "fp32")]
    assert net.meta()["dtype"] == "float32"
    images = torch.randint(0, 256, (2, 3, 64, 80), dtype=torch.uint8)
    feats, logits = net(images, logits=True)
    assert [o for o, _ in built] == ["maxpool2", "pool"]      # logits: the pool engine, built on demand
    x = featurenet.prepare(images, "pytorch-fid")
    with torch.no_grad():
        taps = model.forward_intermediates(x, ["maxpool2", "pool"])
        want_logits = taps["pool"] @ model.fc.weight.T            # no fc bias: the Inception Score's input
    want = taps["maxpool2"].mean(dim=(2, 3))
    assert feats.shape == (2, 192) and float((feats - want).abs().max()) < 1e-4 * float(want.abs().max())
    assert float((logits - want_logits).abs().max()) < 1e-4 * float(want_logits.abs().max())
    assert featurenet.FID_NET_CONFIG == {k: v for k, v in FID_GRAPH.items() if k != "num_classes"}


def test_one_onnx_exporter(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    assert engine_mod.export_onnx is onnx_mod.export_onnx
    assert export_mod.export_onnx is onnx_mod.export_onnx
    assert harness.export_onnx is onnx_mod.export_onnx
    torch.manual_seed(0)
    model = randomize_bn(build_model("inception_mini", num_classes=3)).eval()
    exported = export_mod.export_model(model, tmp_path / "m.onnx", "onnx", input_size=32, check=True)
    engine = engine_mod.build_engine(model, "pool", backend="onnxruntime")
    engine(torch.randn(2, 3, 32, 32))
    for path, output in ((exported.path, "logits"), (engine.cache_files[0], "output")):
        proto = onnx.load(str(path))
        assert proto.opset_import[0].version == onnx_mod.OPSET
        assert [i.name for i in proto.graph.input] == ["input"]
        assert [o.name for o in proto.graph.output] == [output]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param   # the batch axis is dynamic
    assert model.conv1.weight.is_contiguous()                                 # the caller's model untouched


def test_imports_go_one_way():
    code = ("import sys, inceptionv3.engine.runner, inceptionv3.metrics.pipeline, inceptionv3.tasks.features; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
            "('torchvision', 'onnx', 'onnxruntime', 'openvino', 'scipy')}), "
            "[m for m in sys.modules if m.startswith(('inceptionv3.tasks', 'inceptionv3.cli', 'inceptionv3.training'))"
            " and not m.startswith('inceptionv3.tasks.features') and m != 'inceptionv3.tasks' "
            "and m != 'inceptionv3.tasks.formats'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"
    # the options module the command line's parsers read imports no torch
    code = "import sys, inceptionv3.engine.options, inceptionv3.metrics.modes; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_featurenet_fits_its_engine_to_the_job():
    from inceptionv3.engine.options import AUTO_EXPORT_MIN_IMAGES
    from inceptionv3.engine.resolve import resolve_backend

    model = build_model("inception_v3", init_weights=False, **FID_GRAPH).eval()
    net = featurenet.FeatureNet(model, "pytorch-fid", 2048, "cpu")
    first = net.engine
    net.plan(AUTO_EXPORT_MIN_IMAGES - 1)                       # a small folder stays on torch
    assert net.engine is first and first.backend == "torch"
    net.plan(AUTO_EXPORT_MIN_IMAGES)                           # a large one takes the exported graph, if any
    want = resolve_backend("auto", "fp32", "cpu", "pool", AUTO_EXPORT_MIN_IMAGES)
    assert net.engine.backend == want and net.engine.precision == "fp32"
    assert net._pool_engine is net.engine                      # logits read the same pooled features
    net.plan(1)                                                # the largest job planned counts
    assert net.engine.backend == want
    pinned = featurenet.FeatureNet(model, "pytorch-fid", 2048, "cpu", options=EngineOptions(backend="torch"))
    pinned.plan(10 * AUTO_EXPORT_MIN_IMAGES)                   # an explicit backend is kept
    assert pinned.engine.backend == "torch"
