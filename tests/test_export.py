"""Export to ONNX / TorchScript / torch.export, each rerun in its own runtime, and round trips of our saved
files into torchvision's and timm's InceptionV3. Small inputs (75 px) and one export per format."""
from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn

from inceptionv3.cli.main import main
from inceptionv3.models.inception import inception_v3
from inceptionv3.tasks.export import TOLERANCE, export_model, load_exported_metadata, run_exported
from inceptionv3.weights.io import read_state_dict, save_model
from inceptionv3.weights.load import load_model
from inceptionv3.weights.preprocess import Preprocess

SIZE = 75
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(save|load)` is deprecated:FutureWarning")
NAMES = [f"class_{i}" for i in range(10)]
PRE = Preprocess(input_size=SIZE, resize_size=86, interpolation="bicubic")


def _model(aux: bool = False, seed: int = 0, **kw) -> torch.nn.Module:
    """Random weights at He scale: logits of order 1, so a 1e-4 tolerance is a real test (the default
    std-0.1 init grows activations to ~1e6 over 94 convs, where float32 rounding alone exceeds 1e-4)."""
    torch.manual_seed(seed)
    model = randomize_bn(inception_v3(num_classes=10, aux_logits=aux, **kw), seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
        model.fc.weight.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    save_model(_model(), path, class_names=NAMES, preprocess=PRE)
    return path


def test_onnx_cli_check_metadata_dynamic_batch(model_file, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    args = ["export", "--weights", str(model_file), "--format", "onnx", "--out", str(out), "--check"]
    assert main(args) == 0
    assert "max abs diff" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]   # batch is symbolic
    meta = load_exported_metadata(out, "onnx")
    assert meta["class_names"] == NAMES and Preprocess.from_dict(meta["preprocess"]) == PRE
    assert meta["arch"] == "inception_v3" and meta["model_config"]["num_classes"] == 10
    model = load_model(model_file)
    for batch in (1, 5):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            want = model(x)
        got = run_exported(out, "onnx", x)
        assert got.shape == want.shape and float((got - want).abs().max()) <= TOLERANCE
        assert float(want.abs().max()) > 0.1   # the comparison is not between two zero heads


def test_onnx_tf_pooling_variant(tmp_path):
    # TF-style average pools (padding excluded) and the FID graph's max pool map to other ONNX attributes.
    pytest.importorskip("onnxruntime")
    model = _model(count_include_pad=False, last_pool="max")
    result = export_model(model, tmp_path / "tf.onnx", "onnx", input_size=SIZE, check=True)
    assert result.max_abs_diff <= TOLERANCE


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torchscript_and_pt2_reload(model_file, tmp_path, fmt):
    model = load_model(model_file, aux_logits=False)
    out = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    result = export_model(model, out, fmt, check=True)   # reloads and compares on a batch of 3
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOLERANCE
    assert result.input_shape == (2, 3, SIZE, SIZE)
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.testing.assert_close(run_exported(out, fmt, x), model(x).detach(), rtol=0, atol=TOLERANCE)
    meta = load_exported_metadata(out, fmt)
    assert meta["class_names"] == NAMES and meta["preprocess"]["interpolation"] == "bicubic"


def test_export_refuses_unknown_format(model_file, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(load_model(model_file), tmp_path / "m.xyz", "tflite")
    with pytest.raises(SystemExit):
        main(["export", "--weights", str(model_file), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m.xyz").exists()


def test_round_trip_into_torchvision(tmp_path):
    from torchvision.models import inception_v3 as tv_inception_v3

    ours = _model(aux=True, seed=1)
    path = save_model(ours, tmp_path / "aux.safetensors")
    sd, _ = read_state_dict(path)
    tv = tv_inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=10)
    tv.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), ours(x), rtol=0, atol=1e-5)


def test_round_trip_into_timm(tmp_path):
    timm = pytest.importorskip("timm")

    ours = _model(seed=2)
    path = save_model(ours, tmp_path / "noaux.safetensors")
    sd, _ = read_state_dict(path)
    tm = timm.create_model("inception_v3", pretrained=False, num_classes=10)
    tm.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(tm.eval()(x), ours(x), rtol=0, atol=1e-5)
    # A file with the aux head loads into timm's aux variant just as strictly.
    sd_aux, _ = read_state_dict(save_model(_model(aux=True), tmp_path / "aux.safetensors"))
    timm.create_model("inception_v3", pretrained=False, num_classes=10, aux_logits=True).load_state_dict(
        sd_aux, strict=True)
