"""The command end to end: generated images, a generated weights file, every bad-image kind."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.cli.main import main
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess

CLASSES = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("inception_v3", num_classes=3, aux_logits=False)
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.05)   # a non-trivial head, so the top-k order means something
    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    save_model(model, path, class_names=CLASSES,
               preprocess=Preprocess(input_size=75, resize_size=80, interpolation="bilinear"))
    return path


def _good_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (mode, ext) in enumerate([("RGB", "png"), ("RGB", "jpg"), ("L", "png"), ("RGBA", "png"),
                                     ("P", "gif"), ("CMYK", "jpg"), ("I;16", "png"), ("1", "bmp")]):
        arr = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
        p = folder / f"good_{i}_{mode.replace(';', '')}.{ext}"
        img.save(p)
        paths.append(p)
    return paths


def _bad_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bad = {"empty": folder / "bad_empty.jpg", "text": folder / "bad_text.png",
           "truncated": folder / "bad_truncated.png", "tiny": folder / "bad_tiny.png"}
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not an image\n")
    buf = folder / "whole.tmp"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8) + 7).save(buf, format="PNG")
    bad["truncated"].write_bytes(buf.read_bytes()[:200])
    buf.unlink()
    # A 1x1 image is valid: the transform resizes it, so it must classify, not fail.
    Image.new("RGB", (1, 1), (200, 10, 10)).save(bad["tiny"])
    return bad


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_json_with_bad_images(tmp_path, model_file, capsys):
    good = _good_images(tmp_path / "imgs")
    bad = _bad_images(tmp_path / "imgs")
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "imgs"), "--weights", str(model_file),
                             "--format", "json", "--top-k", "2", "--workers", "0", "--batch-size", "3")
    assert code == 1
    results = json.loads(out)
    by_name = {Path(r["path"]).name: r for r in results}
    assert [r["path"] for r in results] == sorted(r["path"] for r in results)   # folder order: sorted
    for p in good + [bad["tiny"]]:
        preds = by_name[p.name]["predictions"]
        assert len(preds) == 2 and preds[0]["probability"] >= preds[1]["probability"]
        assert preds[0]["label"] in CLASSES and CLASSES[preds[0]["index"]] == preds[0]["label"]
    for kind in ("empty", "text", "truncated"):
        assert "error" in by_name[bad[kind].name], kind
    assert "empty" in by_name[bad["empty"].name]["error"]
    assert "3 of 12 images failed" in err


def test_predict_matches_direct_model_call(tmp_path, model_file, capsys):
    from inceptionv3.data.decode import load_image
    from inceptionv3.data.transforms import eval_transform
    from inceptionv3.weights.load import load_model
    img = _good_images(tmp_path / "one")[0]
    code, out, _ = run_cli(capsys, "predict", str(img), "--weights", str(model_file), "--format", "json",
                           "--top-k", "3", "--workers", "0")
    assert code == 0
    model = load_model(model_file)
    x = eval_transform(model.meta.preprocess)(load_image(img)).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    got = {p["index"]: p["probability"] for p in json.loads(out)[0]["predictions"]}
    for i, p in got.items():
        assert abs(p - probs[i].item()) < 1e-5


def test_predict_table_csv_strict_and_workers(tmp_path, model_file, capsys):
    good = _good_images(tmp_path / "imgs")[:3]
    code, out, _ = run_cli(capsys, "predict", *map(str, good), "--weights", str(model_file), "--workers", "1")
    assert code == 0 and out.count("%") == 3 * 3
    code, out, _ = run_cli(capsys, "predict", *map(str, good), "--weights", str(model_file),
                           "--format", "csv", "--top-k", "1", "--workers", "0")
    assert code == 0 and out.splitlines()[0].startswith("path,rank,index,label")
    assert len(out.splitlines()) == 4
    bad = _bad_images(tmp_path / "bad")["empty"]
    code, out, err = run_cli(capsys, "predict", str(bad), *map(str, good), "--weights", str(model_file),
                             "--strict", "--workers", "0")
    assert code == 1 and "--strict" in err and str(bad) in err


def test_features_all_formats(tmp_path, model_file, capsys):
    imgs = tmp_path / "imgs"
    good = _good_images(imgs)[:4]
    bad = _bad_images(imgs)
    code, _, err = run_cli(capsys, "features", str(imgs / "*.png"), "--weights", str(model_file),
                           "--out", str(tmp_path / "f.npz"), "--workers", "0")
    assert code == 1 and "bad_text.png" in err and "bad_truncated.png" in err
    z = np.load(tmp_path / "f.npz")
    pngs = sorted(p for p in imgs.glob("*.png") if p not in (bad["text"], bad["truncated"]))
    assert z["features"].dtype == np.float32 and z["features"].shape == (len(pngs), 2048)
    assert list(z["paths"]) == [str(p) for p in pngs]
    assert "bad_text.png" in " ".join(z["failed_paths"])

    code, *_ = run_cli(capsys, "features", *map(str, good), "--weights", str(model_file),
                       "--out", str(tmp_path / "f.npy"), "--layer", "Mixed_6e", "--workers", "0")
    assert code == 0
    arr = np.load(tmp_path / "f.npy")
    assert arr.shape == (4, 768)
    assert (tmp_path / "f.paths.txt").read_text().split() == [str(p) for p in good]

    code, *_ = run_cli(capsys, "features", *map(str, good), "--weights", str(model_file),
                       "--out", str(tmp_path / "f.safetensors"), "--layer", "logits", "--workers", "0")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "f.safetensors"), "numpy") as f:
        assert f.get_tensor("features").shape == (4, 3)
        assert json.loads(f.metadata()["paths"]) == [str(p) for p in good]
    # Same images, same model: the pool features equal a direct forward pass.
    from inceptionv3.tasks.features import extract_features
    res = extract_features(good[:1], weights=model_file, workers=0)
    res_logits = extract_features(good[:1], weights=model_file, workers=0, layer="logits")
    m = build_model("inception_v3", num_classes=3, aux_logits=False)
    from inceptionv3.weights.load import load_weights
    load_weights(m, model_file)
    with torch.no_grad():
        np.testing.assert_allclose(m.fc(torch.from_numpy(res.features)).numpy(), res_logits.features,
                                   atol=1e-5)


def test_usage_errors(tmp_path, model_file, capsys):
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "nope.jpg"), "--weights", str(model_file))
    assert code == 2 and "nope.jpg" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "empty"), "--weights", str(model_file))
    assert code == 2 and "no images" in err.lower()
    img = _good_images(tmp_path / "i")[0]
    code, _, err = run_cli(capsys, "predict", str(img), "--weights", str(tmp_path / "missing.safetensors"))
    assert code == 2 and "missing.safetensors" in err
    code, _, err = run_cli(capsys, "features", str(img), "--weights", str(model_file),
                           "--out", str(tmp_path / "x.csv"))
    assert code == 2 and ".npz" in err
    with pytest.raises(SystemExit) as e:
        main(["features", str(img), "--out", "x.npy", "--layer", "Mixed_9z"])
    assert e.value.code == 2
    code, _, err = run_cli(capsys, "predict", str(img), "--weights", str(model_file), "--top-k", "0")
    assert code == 2 and "--top-k" in err


def test_info(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "27,161,264" in out and "5.71 G" in out and "Mixed_6e" in out
    code, out, _ = run_cli(capsys, "info", "--no-aux")
    assert "23,834,568" in out
    code, out, _ = run_cli(capsys, "info", "--arch", "inception_mini", "--input-size", "75")
    assert "925,912" in out and "288 x 7 x 7" in out


def test_entry_points_help():
    for cmd in ([sys.executable, "-m", "inceptionv3", "--help"],
                [str(Path(sys.executable).parent / "inceptionv3"), "predict", "--help"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        assert "usage: inceptionv3" in res.stdout


def test_train_evaluate_predict_end_to_end(tmp_path, capsys):
    """The demo's command chain, small: train -> evaluate (+plot) -> write PNGs -> predict -> features."""
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "digits", "--out", str(run), "--arch", "inception_mini",
                           "--image-size", "32", "--epochs", "1", "--limit", "96", "--batch-size", "32",
                           "--workers", "0", "--no-progress")
    assert code == 0 and "best held-out top-1" in out
    assert json.loads((run / "config.json").read_text())["arch"] == "inception_mini"
    code, out, _ = run_cli(capsys, "evaluate", "digits", "--weights", str(run / "best.safetensors"),
                           "--format", "json", "--plot", str(tmp_path / "conf.png"), "--workers", "0")
    assert code == 0
    report = json.loads(out)
    assert report["n"] == 450 and len(report["confusion"]) == 10
    assert (tmp_path / "conf.png").read_bytes()[:4] == b"\x89PNG"
    from inceptionv3.demo import write_digits
    pngs = write_digits(tmp_path / "digits", count=4)
    code, out, _ = run_cli(capsys, "predict", str(tmp_path / "digits"), "--weights",
                           str(run / "best.safetensors"), "--format", "json", "--workers", "0")
    assert code == 0 and [r["path"] for r in json.loads(out)] == [str(p) for p in pngs]
    assert all(r["predictions"][0]["label"] in "0123456789" for r in json.loads(out))
    code, *_ = run_cli(capsys, "features", str(tmp_path / "digits"),
                       "--weights", str(run / "best.safetensors"), "--out", str(tmp_path / "f.npz"),
                       "--workers", "0")
    assert code == 0 and np.load(tmp_path / "f.npz")["features"].shape == (4, 288)


def test_every_image_kind_through_predict_and_features(tmp_path, model_file, monkeypatch):
    """Odd-but-valid images are classified; broken ones are reported with a reason, never a crash."""
    from PIL import Image as PILImage

    from inceptionv3.tasks.features import extract_features
    from inceptionv3.tasks.predict import predict

    d = tmp_path / "kinds"
    d.mkdir()
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    rgb.convert("LA").save(d / "la.png")
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    pal.save(d / "p_transparent.png")
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.full((80, 80), 40000, np.uint16)).save(d / "sixteen_bit.png")
    rgb.convert("1").save(d / "one_bit.png")
    rgb.save(d / "animated.gif", save_all=True, append_images=[rgb.rotate(90)], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6   # rotated 90 degrees: must be turned upright on load
    rgb.save(d / "exif_rotated.jpg", exif=exif)
    (d / "zero_bytes.png").write_bytes(b"")
    (d / "not_an_image.jpg").write_text("hello")
    rgb.save(d / "whole.jpg")
    (d / "truncated.jpg").write_bytes((d / "whole.jpg").read_bytes()[:300])
    (d / "whole.jpg").unlink()
    Image.new("RGB", (300, 300)).save(d / "bomb.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20_000)   # 300 x 300 is now "too large"

    good = {"la.png", "p_transparent.png", "cmyk.jpg", "sixteen_bit.png", "one_bit.png", "animated.gif",
            "exif_rotated.jpg"}
    reasons = {"zero_bytes.png": "empty", "not_an_image.jpg": "not an image", "truncated.jpg": "truncated",
               "bomb.png": "MAX_IMAGE_PIXELS"}
    results = {Path(r["path"]).name: r for r in predict([d], weights=model_file, workers=0, top_k=1)}
    assert set(results) == good | set(reasons)
    for name in good:
        assert results[name]["predictions"][0]["label"] in CLASSES, name
    for name, why in reasons.items():
        assert why.lower() in results[name]["error"].lower(), (name, results[name])

    feats = extract_features([d], weights=model_file, workers=0)
    assert feats.features.shape == (len(good), 2048) and np.isfinite(feats.features).all()
    assert {Path(p).name for p in feats.paths} == good
    assert {Path(p).name for p, _ in feats.failures} == set(reasons)


def test_train_and_evaluate_from_a_csv_list(tmp_path, capsys):
    """A CSV list with a bad row file: training skips it, the model keeps the list's labels, evaluate reads
    the same list's held-out split."""
    from inceptionv3.weights.load import load_model
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for label, shade in (("3", 40), ("12", 200)):
        for i in range(6):
            arr = np.clip(rng.normal(shade, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / f"{label}_{i}.png")
            lines.append(f"{label}_{i}.png,{label}")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines.append("broken.png,3")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", str(tmp_path / "list.csv"), "--out", str(run), "--arch",
                           "inception_mini", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
                           "--workers", "0", "--no-progress", "--val-fraction", "0.25")
    assert code == 0 and "best held-out top-1" in out
    assert load_model(run / "best.safetensors").meta.class_names == ["3", "12"]
    code, out, _ = run_cli(capsys, "evaluate", str(tmp_path / "list.csv"), "--weights",
                           str(run / "best.safetensors"), "--format", "json", "--workers", "0",
                           "--val-fraction", "0.25")
    report = json.loads(out)
    assert code == 0 and report["n"] + report["skipped"] == 4 and report["class_names"] == ["3", "12"]


def test_names_with_line_breaks_stay_one_line_in_predict_outputs(tmp_path, model_file, capsys):
    from inceptionv3.runtime.files import unquote_path
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ["new\nline.png", "tab\there.png", "broken\nname.png"]
    Image.new("RGB", (40, 40), (90, 20, 200)).save(folder / names[0])
    Image.new("RGB", (40, 40), (10, 200, 20)).save(folder / names[1])
    (folder / names[2]).write_bytes(b"not an image")
    code, out, _ = run_cli(capsys, "predict", str(folder), "--weights", str(model_file), "--top-k", "1",
                           "--workers", "0")
    assert code == 1
    listed = [unquote_path(line) for line in out.splitlines() if not line.startswith(" ")]
    assert sorted(Path(p).name for p in listed) == sorted(names)    # one line per image, names intact
    code, out, _ = run_cli(capsys, "predict", str(folder), "--weights", str(model_file), "--top-k", "1",
                           "--workers", "0", "--format", "csv")
    rows = list(csv.reader(out.splitlines(keepends=True)))
    assert sorted(Path(r[0]).name for r in rows[1:]) == sorted(names)
