"""Converters with parity tests: Keras HDF5 (Keras 2 layout and Keras 3 .weights.h5, built under the torch
backend with random weights), torchvision, timm and pytorch-fid; and their bad-input messages."""
from __future__ import annotations

import http.server
import os
import shutil
import threading
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from inceptionv3.cli.main import main
from inceptionv3.models.inception import inception_v3
from inceptionv3.weights.convert.run import convert
from inceptionv3.weights.errors import WeightsError
from inceptionv3.weights.load import load_model

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is imported (lazily, below)
SIZE = 75
# Keras' torch backend calls np.array(tensor, copy=False) on every variable; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _he(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN terms and He-scaled convs: logits of order 1, so 1e-4 is a meaningful tolerance."""
    torch.manual_seed(seed)
    randomize_bn(model, seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.1)
    return model.eval()


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


# ---------------------------------------------------------------------------------------------- Keras


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """A random-weight keras.applications.InceptionV3 saved as Keras 3 .weights.h5 and in the Keras 2
    HDF5 layout, with its logits and pooled features on one input batch."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras is loaded with another backend")
    h5py = pytest.importorskip("h5py")
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(weights=None, input_shape=(SIZE, SIZE, 3), classes=10,
                                           classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        values = []
        for var, value in zip(layer.weights, layer.get_weights()):
            if "variance" in var.path:
                values.append(rng.uniform(0.5, 1.5, value.shape))
            elif value.ndim == 4:   # HWIO kernel at He scale
                values.append(rng.standard_normal(value.shape) * np.sqrt(2 / np.prod(value.shape[:3])))
            else:
                values.append(rng.standard_normal(value.shape) * 0.1)
        if values:
            layer.set_weights([v.astype("float32") for v in values])
    folder = tmp_path_factory.mktemp("keras")
    model.save_weights(str(folder / "k3.weights.h5"))
    model.save(str(folder / "k3.keras"))   # the Keras 3 archive: a zip holding model.weights.h5
    with h5py.File(folder / "k2.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)   # the Keras 2 save_weights layout
    # The Keras 2 model.save layout: the same groups under model_weights/.
    legacy_h5_format.save_model_to_hdf5(model, str(folder / "k2full.h5"))
    x = rng.standard_normal((2, SIZE, SIZE, 3)).astype("float32")
    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    return {"k3": folder / "k3.weights.h5", "k3archive": folder / "k3.keras", "k2": folder / "k2.h5", "k2full": folder / "k2full.h5",
            "x": torch.from_numpy(x),
            "logits": torch.from_numpy(keras.ops.convert_to_numpy(model(x))),
            "features": torch.from_numpy(keras.ops.convert_to_numpy(pooled(x)))}


@pytest.mark.parametrize("kind", ["k2", "k2full", "k3", "k3archive"])
def test_keras_parity(keras_files, tmp_path, kind):
    out = tmp_path / "keras.safetensors"
    result = convert(keras_files[kind], "keras", out)
    assert result["tensors"] == 94 * 6 + 2   # conv + 4 BN tensors + num_batches_tracked; fc
    model = load_model(out)
    assert model.config["count_include_pad"] is False and model.AuxLogits is None
    assert model.meta.preprocess.mean == (0.5, 0.5, 0.5)
    x = keras_files["x"].permute(0, 3, 1, 2)   # NHWC -> NCHW
    with torch.no_grad():
        logits, feats = model(x), _features(model, x)
    assert float(keras_files["logits"].abs().max()) > 0.5
    torch.testing.assert_close(logits, keras_files["logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(feats, keras_files["features"], rtol=0, atol=1e-4)


def test_keras_no_top_and_damaged_files(keras_files, tmp_path):
    h5py = pytest.importorskip("h5py")
    notop = tmp_path / "notop.h5"
    shutil.copy(keras_files["k2"], notop)
    with h5py.File(notop, "a") as f:   # what include_top=False leaves: no 'predictions' layer
        del f["predictions"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [n.encode() for n in names if n != "predictions"]
    with pytest.raises(WeightsError, match="no-top file.*cannot classify") as e:
        convert(notop, "keras", tmp_path / "x.safetensors")
    assert str(notop) in str(e.value)
    model = load_model(convert(notop, "keras", tmp_path / "ft.safetensors", num_classes=3)["path"])
    assert model.num_classes == 3

    truncated = tmp_path / "cut.weights.h5"
    truncated.write_bytes(keras_files["k3"].read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated"):
        convert(truncated, "keras", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# ---------------------------------------------------------------------------------------------- torch files


def test_torchvision_state_dict_via_cli(tmp_path, capsys):
    from torchvision.models import inception_v3 as tv_inception_v3

    tv = _he(tv_inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=10))
    src = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), src)
    out = tmp_path / "tv.safetensors"
    assert main(["convert", str(src), "--from", "torchvision", "--out", str(out)]) == 0
    assert "tensors checked" in capsys.readouterr().out
    model = load_model(out)
    assert model.AuxLogits is not None and model.config["count_include_pad"] is True
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=1e-5)


def test_timm_safetensors(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    tm = _he(timm.create_model("inception_v3", pretrained=False, num_classes=10))
    src = tmp_path / "model.safetensors"   # as timm's Hugging Face repos name it
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(src))
    model = load_model(convert(src, "timm", tmp_path / "ours.safetensors")["path"])
    assert model.meta.preprocess.interpolation == "bicubic" and model.meta.preprocess.resize_size == 341
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tm(x), rtol=0, atol=1e-5)


def test_fid_parity_with_pytorch_fid(tmp_path, monkeypatch):
    fid_inception = pytest.importorskip("pytorch_fid.inception")

    ours = _he(inception_v3(num_classes=1008, aux_logits=False, count_include_pad=False, last_pool="max"))
    sd = ours.state_dict()
    src = tmp_path / "pt_inception-test.pth"
    torch.save(sd, src)
    # pytorch-fid's own network, given the same state dict instead of its download.
    monkeypatch.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: sd)
    reference = fid_inception.fid_inception_v3().eval()
    model = load_model(convert(src, "fid", tmp_path / "fid.safetensors")["path"])
    assert model.config["last_pool"] == "max" and model.config["count_include_pad"] is False
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-4)


def test_bad_inputs_have_one_clear_message(tmp_path, capsys):
    wrong_classes = tmp_path / "tv10.pth"
    torch.save(inception_v3(num_classes=10, aux_logits=False, init_weights=False).state_dict(), wrong_classes)
    with pytest.raises(WeightsError, match="1008 classes.*10 classes"):
        convert(wrong_classes, "fid", tmp_path / "x.safetensors")

    from inceptionv3.models.mini import inception_mini
    mini = tmp_path / "mini.pth"
    torch.save(inception_mini(num_classes=10).state_dict(), mini)
    with pytest.raises(WeightsError, match="inception_mini state dict, not InceptionV3"):
        convert(mini, "torchvision", tmp_path / "x.safetensors")

    nan = inception_v3(num_classes=10, aux_logits=False, init_weights=False).state_dict()
    nan["fc.bias"][0] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="NaN or Inf"):
        convert(tmp_path / "nan.pth", "timm", tmp_path / "x.safetensors")

    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")   # needs code to unpickle
    assert main(["convert", str(tmp_path / "pickled.pth"), "--from", "torchvision",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "arbitrary code execution" in capsys.readouterr().err

    (tmp_path / "cut.pth").write_bytes(wrong_classes.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="truncated"):
        convert(tmp_path / "cut.pth", "torchvision", tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="unknown source 'onnx'; choose one of keras, tf-slim"):
        convert(wrong_classes, "onnx", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------- trust on first use


class _Files(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}   # what the server serves, by path; reset by the fixture
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback():
    _Files.files, _Files.hits = {}, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Files
    srv.shutdown()
    srv.server_close()


def test_trust_on_first_use_pins_the_first_download(loopback, tmp_path, monkeypatch, capsys):
    from inceptionv3.models.mini import inception_mini
    from inceptionv3.weights import hub, registry
    from inceptionv3.weights import io as weights_io
    from inceptionv3.weights import load as weights_load
    from inceptionv3.weights.preprocess import Preprocess

    url, files = loopback
    src = weights_io.save_model(inception_mini(num_classes=4), tmp_path / "src.safetensors")
    files.files["/timm/tiny/resolve/main/model.safetensors"] = src.read_bytes()
    entry = registry.WeightsEntry(name="tiny.tv_in1k", url=f"{url}/timm/tiny/resolve/main/model.safetensors",
                           sha256="", arch="inception_mini", num_classes=4, categories_file=None,
                           preprocess=Preprocess(input_size=75, resize_size=86), source="test", license="-")
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)

    with pytest.raises(WeightsError, match="published without a sha256.*--trust-on-first-use"):
        hub.fetch(entry, progress=False)
    assert files.hits == []   # nothing is downloaded without consent
    assert main(["weights", "download", entry.name, "--trust-on-first-use"]) == 0
    cached = hub.cache_dir() / "weights" / entry.name / "model.safetensors"   # generic name: own folder
    assert capsys.readouterr().out.strip() == str(cached)
    assert hub._pinned(entry) == hub.sha256_file(src)

    # pinned: no consent needed again, no new download
    model = weights_load.load_model(entry.name, progress=False)
    assert model.num_classes == 4 and len(files.hits) == 1
    # The publisher's file changes: the cached copy is damaged, the new download fails the pinned hash.
    files.files["/timm/tiny/resolve/main/model.safetensors"] = b"x" * 100
    cached.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        hub.fetch(entry, progress=False)
    assert "tiny.tv_in1k" in (main(["weights", "list"]), capsys.readouterr().out)[1]


def test_weights_list_shows_reported_top1_and_top5(capsys):
    from inceptionv3.weights.registry import REGISTRY

    assert main(["weights", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    timm_rows = [e for e in REGISTRY.values() if e.source.startswith("timm ")]
    assert len(timm_rows) == 4
    for e in timm_rows:
        assert 90 < e.metrics["acc@5"] < 100 and 70 < e.metrics["acc@1"] < e.metrics["acc@5"]
        cells = rows[e.name].split()
        assert f"{e.metrics['acc@1']:.3f}" in cells and f"{e.metrics['acc@5']:.3f}" in cells
