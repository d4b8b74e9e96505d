"""Weights registry, download/cache, reading, loading and saving; offline (a local http.server) and fast
(small models: inception_mini, or InceptionV3 with 10 classes and no aux head)."""
from __future__ import annotations

import hashlib
import http.server
import logging
import re
import socket
import threading
from typing import ClassVar

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from inceptionv3.models.builder import build_model
from inceptionv3.models.inception import inception_v3
from inceptionv3.models.mini import inception_mini
from inceptionv3.weights import hub, registry
from inceptionv3.weights import io as weights_io
from inceptionv3.weights import load as weights_load
from inceptionv3.weights.errors import WeightsError
from inceptionv3.weights.load import Preprocess
from inceptionv3.weights.registry import WeightsEntry

torch.set_num_threads(1)


class NeedsCode:
    """A pickled object that weights_only loading must refuse."""


def _v3(**kw) -> torch.nn.Module:
    kw = {"num_classes": 10, "aux_logits": False, "init_weights": False, **kw}
    return inception_v3(**kw).eval()


def _mini(num_classes: int = 10, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return inception_mini(num_classes=num_classes, **kw).eval()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------- registry


def test_registry_schema():
    assert "imagenet" in registry.REGISTRY
    for name, e in registry.REGISTRY.items():
        assert e.name == name
        # "" = no published hash (fetch then needs trust_on_first_use)
        assert re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{8,63}|", e.sha256), name
        assert e.url.startswith("https://") and e.file_name and e.url.endswith(e.file_name)
        assert e.num_classes > 0 and e.source and e.license
        if e.categories_file is not None:
            names = e.categories()
            assert len(names) == e.num_classes and len(set(names)) == e.num_classes
        p = e.preprocess
        assert 0 < p.input_size <= p.resize_size and p.interpolation in ("bilinear", "bicubic", "nearest")
        assert len(p.mean) == len(p.std) == 3 and all(s > 0 for s in p.std)
        assert Preprocess.from_dict(p.to_dict()) == p
        kwargs = e.config()
        if e.arch == "inception_v3":
            kwargs["init_weights"] = False
        with torch.device("meta"):   # the entry's config builds, without allocating the weights
            model = build_model(e.arch, **kwargs)
        assert model.num_classes == e.num_classes
        assert set(e.metrics) <= {"acc@1", "acc@5"}


def test_imagenet_entry():
    e = registry.get_entry("imagenet")
    assert e.sha256 == "0cc3c7bd" and e.file_name == "inception_v3_google-0cc3c7bd.pth"
    assert e.preprocess == Preprocess(299, 342, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert e.model_config == {"aux_logits": True, "count_include_pad": True, "last_pool": "avg"}
    assert e.categories()[:2] == ["tench", "goldfish"] and e.metrics["acc@1"] == 77.294
    with pytest.raises(WeightsError, match="imagenet"):
        registry.get_entry("nope")


def test_entry_validation():
    pre = Preprocess()
    with pytest.raises(ValueError, match="sha256"):
        WeightsEntry("x", "https://a/b.pth", "xyz", "inception_v3", 10, None, pre)
    with pytest.raises(ValueError, match="https"):
        WeightsEntry("x", "http://example.com/b.pth", "0" * 8, "inception_v3", 10, None, pre)


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" and hub.cache_dir().is_dir()


# ---------------------------------------------------------------------------------------------- download


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}   # what the server serves, by path; reset by the fixture
    hits: ClassVar[list[str]] = []
    release = threading.Event()

    def do_GET(self):
        self.hits.append(self.path)
        if self.path.startswith("/slow/"):
            self.release.wait(5)   # never answers within the client's timeout
            return
        body = self.files.get(self.path.replace("/drop/", "/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path.startswith("/drop/"):
            # Promise more than we send, then hang up: a connection dropped mid-file.
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files, _Handler.hits = {}, []
    _Handler.release.clear()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler
    _Handler.release.set()
    srv.shutdown()
    srv.server_close()


def test_download_good_file(server, tmp_path, capsys):
    url, h = server
    data = bytes(range(256)) * 4000
    h.files["/w.pth"] = data
    dest = tmp_path / "c" / "w.pth"
    assert hub.download(f"{url}/w.pth", _sha(data), dest, progress=True) == dest
    assert dest.read_bytes() == data and _no_temp_files(dest.parent)
    assert "w.pth" in capsys.readouterr().err   # the tqdm bar
    dest.unlink()
    hub.download(f"{url}/w.pth", _sha(data)[:8], dest, progress=False)   # a published prefix verifies too
    assert dest.read_bytes() == data


def test_download_hash_mismatch(server, tmp_path):
    url, h = server
    h.files["/w.pth"] = b"x" * 5000
    dest = tmp_path / "w.pth"
    with pytest.raises(WeightsError, match="sha256 mismatch") as e:
        hub.download(f"{url}/w.pth", "0" * 64, dest, progress=False)
    assert f"{url}/w.pth" in str(e.value) and "0" * 64 in str(e.value) and _sha(b"x" * 5000) in str(e.value)
    assert not dest.exists() and _no_temp_files(tmp_path)


def test_download_dropped_connection(server, tmp_path):
    url, h = server
    h.files["/w.pth"] = b"y" * 100_000
    dest = tmp_path / "w.pth"
    with pytest.raises(WeightsError, match="cut off|interrupted") as e:
        hub.download(f"{url}/drop/w.pth", _sha(b"y" * 100_000), dest, progress=False)
    assert f"{url}/drop/w.pth" in str(e.value)
    assert not dest.exists() and _no_temp_files(tmp_path)


def test_download_server_down(tmp_path):
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "cache" / "inception_v3_google-0cc3c7bd.pth"
    url = f"http://127.0.0.1:{port}/{dest.name}"
    with pytest.raises(WeightsError) as e:
        hub.download(url, "0cc3c7bd", dest, progress=False, timeout=5)
    msg = str(e.value)
    assert url in msg and dest.name in msg and str(dest.parent) in msg and "--weights FILE" in msg
    assert not dest.exists() and _no_temp_files(dest.parent)


def test_download_404_and_timeout(server, tmp_path):
    url, _ = server
    with pytest.raises(WeightsError, match="404"):
        hub.download(f"{url}/missing.pth", "0" * 8, tmp_path / "missing.pth", progress=False)
    with pytest.raises(WeightsError, match="slow/x.pth: no answer within 0.3 s"):
        hub.download(f"{url}/slow/x.pth", "0" * 8, tmp_path / "x.pth", progress=False, timeout=0.3)
    assert _no_temp_files(tmp_path)


def _serve_entry(server, tmp_path, model, **entry_kw) -> WeightsEntry:
    url, h = server
    path = tmp_path / "served.pth"
    torch.save(model.state_dict(), path)
    h.files["/tiny-1234abcd.pth"] = data = path.read_bytes()
    kw = {"name": "tiny", "url": f"{url}/tiny-1234abcd.pth", "sha256": _sha(data), "arch": model.arch,
          "num_classes": model.num_classes, "categories_file": None, "model_config": {},
          "preprocess": Preprocess(input_size=75, resize_size=86)}
    return WeightsEntry(**{**kw, **entry_kw})


def test_fetch_caches_and_refetches_corrupt(server, tmp_path, caplog):
    _, h = server
    entry = _serve_entry(server, tmp_path, _mini())
    cached = hub.cache_dir() / "weights" / entry.file_name
    assert hub.fetch(entry, progress=False) == cached and len(h.hits) == 1
    hub.fetch(entry, progress=False)
    assert len(h.hits) == 1   # a good cached file is used as is
    cached.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert hub.fetch(entry, progress=False) == cached
    assert len(h.hits) == 2 and "fails its sha256" in caplog.text
    assert _sha(cached.read_bytes()) == entry.sha256


def test_load_model_from_registry_name(server, tmp_path, monkeypatch):
    src = _mini()
    entry = _serve_entry(server, tmp_path, src)
    monkeypatch.setitem(registry.REGISTRY, "tiny", entry)
    model = weights_load.load_model("tiny", progress=False)
    assert model.meta.source == "tiny" and model.meta.preprocess == entry.preprocess
    assert model.meta.sha256 == entry.sha256 and not model.training
    x = torch.randn(2, 3, 40, 40)
    torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- reading


def test_read_state_dict_formats_and_wrappers(tmp_path):
    sd = _mini().state_dict()
    cases = {
        "plain.pth": sd,
        "ddp.pt": {f"module.{k}": v for k, v in sd.items()},
        "compiled.pth": {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
        "wrapped.pth": {"model_state_dict": sd, "optimizer": {"lr": 0.1}},
        "ema.pth": {"ema": {f"module.{k}": v for k, v in sd.items()}},
        "ckpt.pt": {"model": sd, "ema": sd, "meta": {"arch": "inception_mini", "num_classes": 10},
                    "epoch": 3},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "sniffed.bin"))   # by content
    for name in [*cases, "w.safetensors", "sniffed.bin"]:
        got, meta = weights_io.read_state_dict(tmp_path / name)
        assert sorted(got) == sorted(sd), name
        assert all(torch.equal(got[k], sd[k]) for k in sd), name
        assert meta == ({"arch": "inception_mini", "num_classes": 10} if name == "ckpt.pt" else {}), name


def test_read_state_dict_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _mini().state_dict(), "args": NeedsCode()}, path)
    with pytest.raises(WeightsError, match="arbitrary code execution") as e:
        weights_io.read_state_dict(path)
    assert str(path) in str(e.value) and "safetensors" in str(e.value)


@pytest.mark.parametrize("kind", ["truncated_pth", "truncated_safetensors", "empty", "text", "missing",
                                  "no_state_dict"])
def test_read_state_dict_bad_files(tmp_path, kind):
    sd = _mini().state_dict()
    if kind.startswith("truncated"):
        full = tmp_path / "full"
        if kind == "truncated_pth":
            torch.save(sd, full)
        else:
            save_file(sd, str(full))
        path = tmp_path / ("w.pth" if kind == "truncated_pth" else "w.safetensors")
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path = tmp_path / "w.pth"
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("<html>404 not found</html>")
        elif kind == "no_state_dict":
            torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError) as e:
        weights_io.read_state_dict(path)
    assert str(path) in str(e.value)


def test_read_state_dict_nan(tmp_path):
    sd = _mini().state_dict()
    sd["inception1.branch1.weight"] = sd["inception1.branch1.weight"].clone().fill_(float("nan"))
    sd["fc.bias"] = sd["fc.bias"].clone().fill_(float("inf"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="NaN or Inf") as e:
        weights_io.read_state_dict(tmp_path / "nan.pth")
    assert "inception1.branch1.weight" in str(e.value) and "fc.bias" in str(e.value)


# ---------------------------------------------------------------------------------------------- loading


def test_load_weights_mismatch_message(tmp_path):
    sd = _mini(num_classes=7).state_dict()
    del sd["conv2.weight"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "other.pth"
    torch.save(sd, path)
    model = _mini(num_classes=10)
    with pytest.raises(WeightsError) as e:
        weights_load.load_weights(model, path)
    msg = str(e.value)
    assert msg.startswith(str(path))
    assert "missing from the file (1): conv2.weight" in msg
    assert "not in the model (1): extra.weight" in msg
    assert "mis-shaped (2): fc.weight: file (7, 288) vs model (10, 288)" in msg
    assert "class count differs" in msg
    # Non-strict loads what fits (fine-tuning with a new head).
    before = model.fc.weight.clone()
    meta = weights_load.load_weights(model, path, strict=False)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"]) and torch.equal(model.fc.weight, before)
    assert meta.num_classes == 10 and model.meta is meta


def test_load_weights_wrong_arch_hint(tmp_path):
    torch.save(_mini().state_dict(), tmp_path / "mini.pth")
    with pytest.raises(WeightsError, match="wrong --arch.*inception_mini"):
        weights_load.load_weights(_v3(), tmp_path / "mini.pth")


def test_in_chans_3_to_1_sums_rgb_kernels(tmp_path):
    rgb = _v3()
    with torch.no_grad():   # non-trivial BN so the comparison means something
        for m in rgb.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    gray = _v3(in_chans=1)
    weights_load.load_weights(gray, tmp_path / "rgb.pth")
    key = "Conv2d_1a_3x3.conv.weight"
    assert gray.state_dict()[key].shape == (32, 1, 3, 3)
    torch.testing.assert_close(gray.state_dict()[key], rgb.state_dict()[key].sum(1, keepdim=True))
    x = torch.randn(2, 1, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_save_load_round_trip(tmp_path):
    model = _v3(count_include_pad=False, last_pool="max", dropout=0.2)
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.1)
    names = [f"class {i}" for i in range(10)]
    pre = Preprocess(input_size=75, resize_size=86, interpolation="bicubic", mean=(0.4, 0.5, 0.6),
                     std=(0.2, 0.25, 0.3))
    path = weights_io.save_model(model, tmp_path / "out" / "m.safetensors", class_names=names, preprocess=pre,
                        extra={"epoch": 3})
    assert _no_temp_files(path.parent)
    _, meta = weights_io.read_state_dict(path)
    assert meta["format"] == weights_io.FORMAT and meta["extra"] == {"epoch": 3}
    loaded = weights_load.load_model(path)
    assert loaded.arch == "inception_v3" and loaded.config == model.config
    assert loaded.meta.class_names == names and loaded.meta.preprocess == pre
    assert loaded.meta.model_config == model.config and loaded.meta.source == str(path)
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # A new class count keeps the backbone and drops the old names.
    five = weights_load.load_model(path, num_classes=5)
    assert five.num_classes == 5 and five.meta.class_names is None
    assert torch.equal(five.Mixed_7c.branch1x1.conv.weight, model.Mixed_7c.branch1x1.conv.weight)


def test_save_model_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        weights_io.save_model(_mini(), tmp_path / "m.safetensors", class_names=["a", "b"])
    with pytest.raises(ValueError, match="safetensors"):
        weights_io.save_model(_mini(), tmp_path / "m.pt")


def test_train_checkpoint_meta(tmp_path):
    src = _mini(num_classes=3, dropout=0.1)
    pre = Preprocess(input_size=64, resize_size=72)
    meta = {"format": weights_io.FORMAT, "arch": "inception_mini", "model_config": src.config,
            "num_classes": 3, "class_names": ["a", "b", "c"], "preprocess": pre.to_dict()}
    torch.save({"model": src.state_dict(), "meta": meta, "epoch": 1}, tmp_path / "last.pt")
    model = weights_load.load_model(tmp_path / "last.pt")
    assert model.arch == "inception_mini" and model.config == src.config
    assert model.meta.class_names == ["a", "b", "c"] and model.meta.preprocess == pre


def test_torchvision_state_dict_infers_config(tmp_path, caplog):
    tv = torchvision.models.inception_v3(init_weights=False, aux_logits=True, num_classes=17).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    with caplog.at_level(logging.WARNING):
        model = weights_load.load_model(tmp_path / "tv.pth")
    assert "guessing" in caplog.text   # bare state dict: preprocessing is a logged guess
    assert model.arch == "inception_v3" and model.num_classes == 17 and model.AuxLogits is not None
    assert model.meta.preprocess == registry.REGISTRY["imagenet"].preprocess
    assert model.meta.class_names is None
    assert model.state_dict().keys() == tv.state_dict().keys()
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=0)


def test_local_file_matching_registry_hash_gets_entry_meta(tmp_path, monkeypatch):
    path = tmp_path / "copy.pth"
    torch.save(_mini(num_classes=3).state_dict(), path)
    entry = WeightsEntry("tiny", "https://example.com/tiny.pth", hub.sha256_file(path)[:10], "inception_mini",
                         3, None, Preprocess(input_size=64, resize_size=80))
    monkeypatch.setitem(registry.REGISTRY, "tiny", entry)
    monkeypatch.setattr(WeightsEntry, "categories", lambda self: ["x", "y", "z"])
    model = weights_load.load_model(path)
    assert model.meta.preprocess == entry.preprocess and model.meta.class_names == ["x", "y", "z"]
