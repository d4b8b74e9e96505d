"""Hostile and foreign files on the weights side, driven through the command line as a user would: each
gets one line naming the file and the fix, exit code 2, and no file left half-written. Small networks
(inception_mini, inception_v3 at 75 px) and files generated in tmp_path."""
from __future__ import annotations

import http.server
import json
import os
import stat
import threading
import urllib.request
import zipfile
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file

from inceptionv3.cli.main import main
from inceptionv3.models.inception import inception_v3
from inceptionv3.models.mini import inception_mini
from inceptionv3.tasks import export as export_task
from inceptionv3.training.state import CHECKPOINT_FORMAT, save_checkpoint
from inceptionv3.weights import hub
from inceptionv3.weights import io as weights_io
from inceptionv3.weights import load as weights_load
from inceptionv3.weights.errors import WeightsError
from inceptionv3.weights.preprocess import Preprocess
from inceptionv3.weights.registry import REGISTRY, WeightsEntry

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
    ("onnx", "m.onnx", "50", "inception_v3 needs a side of 75 to"),   # inception_v3's own minimum, known once the file is read
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


# ---------------------------------------------------------------------------------------------- downloads


class _Server(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}   # what the server serves, by path; reset by the fixture
    hits: ClassVar[list[str]] = []
    stop = threading.Event()

    def do_GET(self):
        self.hits.append(self.path)
        body = self.files.get(self.path.replace("/trickle/", "/").replace("/nolength/", "/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path.startswith("/nolength/"):   # no Content-Length, and cut off halfway
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/trickle/"):   # one byte now and then: never a read timeout
            for i in range(len(body)):
                if self.stop.wait(0.2):
                    return
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Server.files, _Server.hits = {}, []
    _Server.stop.clear()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Server
    _Server.stop.set()
    srv.shutdown()
    srv.server_close()


def _entry(monkeypatch, url: str, sha256: str, name: str = "tiny") -> WeightsEntry:
    entry = WeightsEntry(name=name, url=url, sha256=sha256, arch="inception_mini", num_classes=10,
                         categories_file=None, preprocess=PRE, source="test")
    monkeypatch.setitem(REGISTRY, name, entry)
    return entry


def test_download_deadline_stops_a_trickling_server(server, mini_file, monkeypatch, capsys):
    url, files = server
    files.files["/w.safetensors"] = mini_file.read_bytes()
    entry = _entry(monkeypatch, f"{url}/trickle/w.safetensors", hub.sha256_file(mini_file))
    monkeypatch.setenv(hub.DEADLINE_ENV, "1")
    _fails(["weights", "download", "tiny"], capsys, "did not finish within 1 s", hub.DEADLINE_ENV)
    assert not hub.cache_path(entry).exists() and not list(hub.weights_dir().iterdir())
    monkeypatch.setenv(hub.DEADLINE_ENV, "soon")
    _fails(["weights", "download", "tiny"], capsys, f"{hub.DEADLINE_ENV}='soon'")


def test_trust_on_first_use_never_pins_a_truncated_file(server, mini_file, monkeypatch, capsys):
    url, files = server
    files.files["/w.safetensors"] = mini_file.read_bytes()
    entry = _entry(monkeypatch, f"{url}/nolength/w.safetensors", "")
    _fails(["weights", "download", "tiny", "--trust-on-first-use"], capsys, "not usable weights",
           "not pinned")
    assert not hub.cache_path(entry).exists() and not hub.pins_file().exists()


def test_wrong_file_in_the_cache_is_named(mini_file, monkeypatch, capsys):
    # Offline (nothing listens on port 9), with a wrong file placed where the download would go.
    entry = _entry(monkeypatch, "http://127.0.0.1:9/w.safetensors", "ab" * 32)
    placed = hub.cache_path(entry)
    placed.write_bytes(mini_file.read_bytes())
    err = _fails(["info", "--weights", "tiny"], capsys, str(placed), "not the right file",
                 hub.sha256_file(placed), "ab" * 32)
    assert "place it as" not in err and placed.is_file()   # the user's file is named, not deleted


def test_published_prefix_gets_its_full_digest_recorded(server, mini_file, monkeypatch):
    url, files = server
    body = mini_file.read_bytes()
    files.files["/w.safetensors"] = body
    full = hub.sha256_file(mini_file)
    entry = _entry(monkeypatch, f"{url}/w.safetensors", full[:8])
    assert hub.fetch(entry, progress=False) == hub.cache_path(entry)
    assert json.loads(hub.pins_file().read_text())[entry.url] == full
    # From now on all 64 digits are checked: a changed file is refused by the full digest.
    hub.cache_path(entry).write_bytes(b"damaged")
    files.files["/w.safetensors"] = body[:-1] + b" "
    with pytest.raises(WeightsError, match=f"expected {full}"):
        hub.fetch(entry, progress=False)


def test_redirect_from_https_to_http_is_refused():
    handler = hub._NoDowngrade()
    request = urllib.request.Request("https://example.org/w.pth")
    with pytest.raises(WeightsError, match="not https; refused"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://example.org/w.pth")
    assert handler.redirect_request(request, None, 302, "Found", {}, "https://mirror.example.org/w.pth")


def test_torch_hub_copy_is_used_in_place(server, mini_file, tmp_path, monkeypatch, capsys):
    url, files = server
    entry = _entry(monkeypatch, f"{url}/inception_v3_google-0cc3c7bd.pth", hub.sha256_file(mini_file))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    copy = tmp_path / "torch" / "hub" / "checkpoints" / entry.file_name
    copy.parent.mkdir(parents=True)
    copy.write_bytes(mini_file.read_bytes())
    assert main(["weights", "download", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(copy) and files.hits == []
    copy.write_bytes(b"not it")   # a torch hub file that fails the hash is ignored, and left alone
    files.files[f"/{entry.file_name}"] = mini_file.read_bytes()
    assert main(["weights", "download", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(hub.cache_path(entry)) and copy.read_bytes() == b"not it"


# ---------------------------------------------------------------------------------------------- cache


def test_cache_command_lists_and_clears_only_its_files(mini_file, monkeypatch, capsys):
    entry = _entry(monkeypatch, "https://example.org/w.safetensors", hub.sha256_file(mini_file))
    hub.cache_path(entry).write_bytes(mini_file.read_bytes())
    hub.pins_file().write_text("{}\n")
    mine = hub.weights_dir() / "my-notes.txt"
    mine.write_text("keep me")
    engines = hub.cache_dir() / "cache" / "engines"
    engines.mkdir(parents=True)
    graph = engines / ("0" * 32 + ".onnx")
    graph.write_bytes(b"graph")
    (engines / (graph.name + ".sha256")).write_text("00\n")
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "weights     2 file(s)" in out and "engines     2 file(s)" in out and "did not make" in out
    assert main(["cache", "clear", "--engines"]) == 0
    assert not list(engines.iterdir()) and hub.cache_path(entry).is_file()
    assert main(["cache", "clear"]) == 0
    assert "left 1 file(s) inceptionv3 did not make" in capsys.readouterr().out
    assert [p.name for p in hub.weights_dir().iterdir()] == ["my-notes.txt"]


def test_saved_models_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = weights_io.save_model(_mini(), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and weights_load.load_model(path).num_classes == 10
