"""Hostile and foreign files on the weights side, driven through the command line as a user would: each
gets one line naming the file and the fix, exit code 2, and no file left half-written. Small networks
(inception_mini, inception_v3 at 75 px) and files generated in tmp_path."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from inceptionv3.cli.main import main
from inceptionv3.models.inception import inception_v3
from inceptionv3.models.mini import inception_mini
from inceptionv3.tasks import export as export_task
from inceptionv3.training.state import CHECKPOINT_FORMAT, save_checkpoint
from inceptionv3.weights import io as weights_io
from inceptionv3.weights import load as weights_load
from inceptionv3.weights.errors import WeightsError
from inceptionv3.weights.preprocess import Preprocess
from inceptionv3.weights.registry import REGISTRY

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(save|load|script)` is deprecated:FutureWarning")
PRE = Preprocess(input_size=75, resize_size=86)


def _mini(num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return inception_mini(num_classes=num_classes).eval()


def _fails(argv: list[str], capsys, *needles: str) -> str:
    """Run the CLI, expect exit 2 and one error line naming every needle; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "weights_only=False" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def mini_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mini") / "mini.safetensors"
    weights_io.save_model(_mini(), path, preprocess=PRE, class_names=[f"c{i}" for i in range(10)])
    return path


# ---------------------------------------------------------------------------------------------- export


def test_export_check_is_relative_to_the_logits_scale(tmp_path, capsys):
    # A trained network's logits reach tens or hundreds; an absolute 1e-4 would fail good files.
    model = _mini()
    with torch.no_grad():
        model.fc.weight.mul_(3000)
        path = weights_io.save_model(model, tmp_path / "big.safetensors", preprocess=PRE)
        x = export_task.photo_like(weights_load.load_model(path), 75)
        assert float(model(x).abs().max()) > 50   # the logits are large on photo-like inputs
    out = tmp_path / "big.onnx"
    assert main(["export", "--weights", str(path), "--format", "onnx", "--out", str(out), "--check"]) == 0
    assert "checked: max abs diff" in capsys.readouterr().out and out.is_file()


def test_export_failed_check_leaves_no_file(mini_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.pt"
    out.write_bytes(b"an older export")
    real = export_task.run_exported
    monkeypatch.setattr(export_task, "run_exported", lambda *a: real(*a) + 1.0)   # a runtime that is off
    _fails(["export", "--weights", str(mini_file), "--format", "torchscript", "--out", str(out), "--check"],
           capsys, str(out), "differs from PyTorch", "not written")
    assert out.read_bytes() == b"an older export"   # the earlier file is kept, not replaced
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]   # and no temporary file is left


@pytest.fixture(scope="module")
def v3_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("v3") / "v3.safetensors"
    weights_io.save_model(inception_v3(num_classes=3, aux_logits=False, init_weights=False), path,
                          preprocess=PRE)
    return path


@pytest.mark.parametrize(("fmt", "out", "size", "needle"), [
    ("onnx", "m.onnx", "10", "--input-size 10"),
    ("torchscript", "m.pt", "10", "--input-size 10"),
    ("onnx", "m.onnx", "50", "75 to"),            # inception_v3's own minimum, known once the file is read
    ("onnx", "m.onyx", None, ".onnx"),
    ("pt2", "m.pt", None, ".pt2"),
])
def test_export_refuses_bad_size_and_suffix_up_front(v3_file, tmp_path, capsys, fmt, out, size, needle):
    argv = ["export", "--weights", str(v3_file), "--format", fmt, "--out", str(tmp_path / out)]
    _fails(argv + (["--input-size", size] if size else []), capsys, needle)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- foreign files


def _keras_archive(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.writestr("config.json", json.dumps({"class_name": "Functional"}))
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(100))


def _onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(path))


@pytest.mark.parametrize(("name", "make", "needles"), [
    ("keras.h5", lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200)),
     ("Keras (HDF5)", "inceptionv3 convert --from keras")),
    ("model.weights.h5", lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200)),
     ("Keras (HDF5)", "inceptionv3 convert --from keras")),
    ("model.pth", lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200)), ("Keras (HDF5)",)),   # misnamed
    ("model.keras", _keras_archive, (".keras archive", "inceptionv3 convert --from keras")),
    ("model.onnx", _onnx, ("ONNX graph", "ONNX Runtime", "inceptionv3 export")),
    ("script.pt", lambda p: torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(p)),
     ("TorchScript archive", "not run", "inceptionv3 export")),
    ("notes.pth", lambda p: p.write_text("<html>404 Not Found</html>\n"), ("a text file", "404 Not Found")),
])
def test_foreign_files_as_weights_are_named(tmp_path, capsys, name, make, needles):
    path = tmp_path / name
    make(path)
    err = _fails(["info", "--weights", str(path)], capsys, str(path), *needles)
    assert "arbitrary code" not in err


def test_keras_archive_is_recognised_by_convert(tmp_path, capsys):
    # convert --from keras opens the archive and reads its model.weights.h5 (here a damaged one).
    path = tmp_path / "model.keras"
    _keras_archive(path)
    _fails(["convert", str(path), "--from", "keras", "--out", str(tmp_path / "o.safetensors")], capsys,
           str(path), "HDF5")
    assert not (tmp_path / "o.safetensors").exists()


# ---------------------------------------------------------------------------------------------- signatures


def test_key_mismatch_hint_uses_the_real_signature(tmp_path):
    # A ResNet-style file: it has a conv1.weight, like inception_mini, and 1000 classes over 2048 features.
    sd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
          "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1), "fc.weight": torch.zeros(1000, 2048),
          "fc.bias": torch.zeros(1000)}
    torch.save(sd, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError) as e:
        weights_load.load_weights(_mini(num_classes=1000), tmp_path / "resnet.pth")
    msg = str(e.value)
    assert "matches no known network" in msg and "class count differs" not in msg
    assert "input width differs" not in msg or "(2048,)" in msg
    with pytest.raises(WeightsError, match="does not look like an InceptionV3"):
        weights_load.load_model(tmp_path / "resnet.pth")
    # A mini file with another class count: the right dimension is compared and named.
    torch.save(_mini(num_classes=7).state_dict(), tmp_path / "mini7.pth")
    with pytest.raises(WeightsError, match=r"class count differs \(file 7, model 10\)") as e:
        weights_load.load_weights(_mini(num_classes=10), tmp_path / "mini7.pth")
    assert "wrong --arch" not in str(e.value)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_damaged_checkpoint_is_refused_by_weights(tmp_path, capsys):
    model = _mini()
    meta = {"format": weights_io.FORMAT, "arch": "inception_mini", "model_config": model.config,
            "num_classes": 10, "preprocess": PRE.to_dict()}
    state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "meta": meta, "epoch": 1}
    good = save_checkpoint(tmp_path / "good" / "last.pt", state)
    assert main(["info", "--weights", str(good)]) == 0
    capsys.readouterr()
    # Flipped bytes in a tensor, which torch.load does not notice: the digest does.
    damaged = torch.load(good, weights_only=True)
    damaged["model"]["fc.weight"][0, 0] += 1.0
    torch.save(damaged, tmp_path / "last.pt")
    _fails(["info", "--weights", str(tmp_path / "last.pt")], capsys, str(tmp_path / "last.pt"),
           "do not match their digest")


# ---------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("model_config", "[1, 2]", "'model_config' must be a JSON object"),
    ("num_classes", "1000000000", "'num_classes' must be an integer from 1 to"),
    ("num_classes", "ten", "'num_classes' is not valid JSON"),
    ("num_classes", "\"10\"", "'num_classes' must be an integer"),
    ("preprocess", json.dumps({**PRE.to_dict(), "input_size": 60000, "resize_size": 60000}), "4096"),
    ("class_names", "{\"a\": 1}", "'class_names' must be a list"),
    ("arch", "resnet50", "'arch' is 'resnet50'"),
])
def test_malformed_safetensors_metadata(tmp_path, capsys, field, value, needle):
    meta = {"format": weights_io.FORMAT, "arch": "inception_mini", "num_classes": "10",
            "model_config": json.dumps(_mini().config), "preprocess": json.dumps(PRE.to_dict())}
    meta[field] = value
    path = tmp_path / "bad.safetensors"
    save_file(_mini().state_dict(), str(path), metadata=meta)
    _fails(["info", "--weights", str(path)], capsys, str(path), needle)


# ---------------------------------------------------------------------------------------------- info, names


def test_info_shows_the_files_input_size(mini_file, capsys):
    assert main(["info", "--weights", str(mini_file)]) == 0
    out = capsys.readouterr().out
    assert "input             75 x 75" in out
    _fails(["info", "--weights", str(mini_file), "--input-size", "9"], capsys, "--input-size 9")


def test_bare_1000_class_state_dict_gets_imagenet_names(tmp_path):
    with torch.device("meta"):
        shapes = inception_v3(num_classes=1000, aux_logits=False, init_weights=False).state_dict()
    torch.save({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}, tmp_path / "tv.pth")
    model = weights_load.load_model(tmp_path / "tv.pth")
    assert model.meta.class_names == REGISTRY["imagenet"].categories()
    assert len(model.meta.class_names) == 1000
