"""Preprocess presets, robust image decoding and input expansion (all images made here with PIL)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from inceptionv3.data import transforms
from inceptionv3.data.decode import ImageError, load_image
from inceptionv3.data.paths import IMAGE_EXTENSIONS, InputError, expand_paths
from inceptionv3.data.transforms import eval_transform, train_transform
from inceptionv3.weights.preprocess import Preprocess

torch.set_num_threads(1)

SMALL = Preprocess(input_size=75, resize_size=86)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _noise(size=(64, 64), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


# ------------------------------------------------------------------------------------------------
# Preprocess
# ------------------------------------------------------------------------------------------------


def test_preprocess_round_trip_through_json():
    pre = Preprocess(input_size=224, resize_size=256, interpolation="bicubic",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    d = json.loads(json.dumps(pre.to_dict()))
    assert d == pre.to_dict()
    again = Preprocess.from_dict(d)
    assert again == pre and hash(again) == hash(pre)
    assert isinstance(again.mean, tuple)
    assert Preprocess.from_dict({}) == Preprocess()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": "abc"}, "std"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"input_size": 0}, "input_size"),
        ({"resize_size": -3}, "resize_size"),
        ({"input_size": 2.5}, "input_size"),
        ({"input_size": 300, "resize_size": 299}, "resize_size"),
    ],
)
def test_preprocess_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Preprocess(**kwargs)


def test_preprocess_from_dict_unknown_keys_named():
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocess.from_dict({"input_size": 299, "crop_pct": 0.875})
    with pytest.raises(ValueError):
        Preprocess.from_dict([1, 2])


# ------------------------------------------------------------------------------------------------
# transforms
# ------------------------------------------------------------------------------------------------


def test_eval_transform_matches_reference_pipeline():
    import torchvision.transforms as v1

    pre = Preprocess(input_size=75, resize_size=86, interpolation="bicubic",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    img = _noise((120, 97))
    ref = v1.Compose([
        v1.Resize(86, interpolation=v1.InterpolationMode.BICUBIC, antialias=True),
        v1.CenterCrop(75), v1.ToTensor(), v1.Normalize(pre.mean, pre.std),
    ])(img)
    out = eval_transform(pre)(img)
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    assert out.shape == (3, 75, 75)
    torch.testing.assert_close(out, ref)


def test_eval_transform_normalisation_and_grey_input():
    white = Image.new("RGB", (90, 120), (255, 255, 255))
    out = eval_transform(SMALL)(white)
    torch.testing.assert_close(out, torch.ones(3, 75, 75))  # (1 - 0.5) / 0.5
    grey = Image.new("L", (80, 80), 0)
    assert torch.all(eval_transform(SMALL)(grey) == -1) and eval_transform(SMALL)(grey).shape == (3, 75, 75)


def test_eval_transform_one_channel_uses_mean_of_stats():
    pre = Preprocess(input_size=75, resize_size=75, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    out = eval_transform(pre, in_chans=1)(Image.new("RGB", (75, 100), (255, 255, 255)))
    assert out.shape == (1, 75, 75)
    torch.testing.assert_close(out, torch.full((1, 75, 75), (1 - 0.5) / 0.3))
    with pytest.raises(ValueError, match="in_chans"):
        eval_transform(pre, in_chans=2)


def test_train_transform_shapes_and_picklable():
    t = train_transform(SMALL)
    x = t(_noise((100, 80)))
    assert x.shape == (3, 75, 75) and x.dtype == torch.float32
    assert train_transform(SMALL, in_chans=1)(_noise((100, 80))).shape == (1, 75, 75)
    pickle.loads(pickle.dumps(t))
    pickle.loads(pickle.dumps(eval_transform(SMALL)))
    # full-image crop without flip == plain resize
    img = _noise((90, 90))
    fixed = train_transform(SMALL, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    pre75 = Preprocess(input_size=75, resize_size=75)
    torch.testing.assert_close(fixed(img), eval_transform(pre75)(img))


# ------------------------------------------------------------------------------------------------
# load_image: every mode
# ------------------------------------------------------------------------------------------------


def test_rgb_and_l_conversions(tmp_path):
    p = _save(Image.new("RGB", (10, 8), (200, 10, 10)), tmp_path / "a.png")
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (10, 8) and img.getpixel((0, 0)) == (200, 10, 10)
    grey = load_image(p, "L")
    assert grey.mode == "L"
    q = _save(Image.new("L", (5, 5), 77), tmp_path / "g.pgm")
    assert load_image(q).getpixel((0, 0)) == (77, 77, 77)
    assert load_image(q, "L").getpixel((0, 0)) == 77
    with pytest.raises(ValueError, match="mode"):
        load_image(p, "RGBA")


def test_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent -> white
    rgba.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue stays blue
    rgba.putpixel((2, 0), (0, 0, 0, 128))  # half black over white -> mid grey
    img = load_image(_save(rgba, tmp_path / "rgba.png"))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(v - 127) <= 1 for v in img.getpixel((2, 0)))
    la = Image.new("LA", (2, 2), (0, 0))
    assert load_image(_save(la, tmp_path / "la.png"), "L").getpixel((0, 0)) == 255


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0] + [255, 0, 0] * 255)
    p.putpixel((1, 1), 1)
    path = _save(p, tmp_path / "p.png", transparency=0)
    img = load_image(path)
    assert img.getpixel((0, 0)) == (255, 255, 255)  # index 0 is transparent
    assert img.getpixel((1, 1)) == (255, 0, 0)
    plain = _save(p, tmp_path / "p.gif")
    assert load_image(plain).getpixel((1, 1)) == (255, 0, 0)


def test_cmyk(tmp_path):
    img = load_image(_save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "c.tif"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)
    jpg = load_image(_save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg"))
    r, g, b = jpg.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_16bit_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 65535, 257 * 100, 1000]], dtype=np.uint16)
    src = Image.fromarray(arr)
    assert src.mode.startswith("I;16")
    img = load_image(_save(src, tmp_path / "deep.png"), "L")
    assert np.asarray(img).ravel().tolist() == [0, 255, 100, 4]
    assert load_image(tmp_path / "deep.png").getpixel((1, 0)) == (255, 255, 255)


def test_32bit_int_and_float(tmp_path):
    ints = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32), "I")
    assert np.asarray(load_image(_save(ints, tmp_path / "i.tif"), "L")).ravel().tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(load_image(_save(floats, tmp_path / "f.tif"), "L")).ravel().tolist() == [0, 128, 255]


def test_one_bit(tmp_path):
    bw = Image.new("1", (4, 4), 0)
    bw.putpixel((2, 2), 1)
    img = load_image(_save(bw, tmp_path / "bw.png"))
    assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((2, 2)) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    img = load_image(_save(stored, tmp_path / "rot.jpg", exif=exif, quality=95))
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    assert load_image(path).getpixel((4, 4)) == (255, 0, 0)


# ------------------------------------------------------------------------------------------------
# load_image: every bad kind
# ------------------------------------------------------------------------------------------------


def _reason(path) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path)
    err = info.value
    assert err.path == str(path) and str(err) == f"{path}: {err.reason}"
    return err.reason


def test_bad_files_have_short_reasons(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _reason(empty) == "empty file (0 bytes)"

    text = tmp_path / "notes.jpg"
    text.write_text("hello, not a picture\n")
    assert _reason(text) == "not an image PIL can read"

    folder = tmp_path / "x.jpg"
    folder.mkdir()
    assert "directory" in _reason(folder)

    assert _reason(tmp_path / "missing.png") == "no such file"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images(tmp_path, fmt):
    good = _save(_noise(), tmp_path / f"good.{fmt.lower()}", format=fmt)
    data = good.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    assert _reason(cut) == "truncated or corrupt image data"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_permission_denied(tmp_path, monkeypatch):
    path = _save(_noise((4, 4)), tmp_path / "locked.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(transforms.Image, "open", refuse)  # works as root too, where chmod 000 does not
    assert _reason(path) == "permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read mode-000 files")
def test_permission_denied_chmod(tmp_path):
    path = _save(_noise((4, 4)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        assert _reason(path) == "permission denied"
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("side", [12, 40])  # 144 px: PIL's warning zone; 1600 px: its error zone
def test_decompression_bomb_guard_kept(tmp_path, monkeypatch, side):
    path = _save(Image.new("RGB", (side, side)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    reason = _reason(path)
    assert "larger than" in reason and "PIL.Image.MAX_IMAGE_PIXELS" in reason
    assert Image.MAX_IMAGE_PIXELS == 100  # untouched by load_image


def test_image_error_pickles():
    e = pickle.loads(pickle.dumps(ImageError("a/b.jpg", "empty file (0 bytes)")))
    assert (e.path, e.reason, str(e)) == ("a/b.jpg", "empty file (0 bytes)", "a/b.jpg: empty file (0 bytes)")
    assert isinstance(e, ValueError)


# ------------------------------------------------------------------------------------------------
# expand_paths
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    img = Image.new("RGB", (4, 4))
    for rel in ["a/2.png", "a/1.JPG", "a/sub/0.png", "a/.hidden.png", "a/.git/x.png", "b/z.jpeg", "b/y.webp"]:
        _save(img, tmp_path / rel, format="PNG")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "readme.md").write_text("x")
    return tmp_path


def test_expand_directory_recursive_sorted_filtered(tree):
    a = tree / "a"
    assert expand_paths([a]) == [a / "1.JPG", a / "2.png", a / "sub" / "0.png"]
    assert expand_paths(str(a)) == expand_paths([str(a)])  # a lone string is one input, not characters


def test_expand_keeps_argument_order_and_drops_duplicates(tree):
    a, b = tree / "a", tree / "b"
    out = expand_paths([str(b / "z.jpeg"), str(a), str(a / "2.png"), str(b / "z.jpeg")])
    assert out == [b / "z.jpeg", a / "1.JPG", a / "2.png", a / "sub" / "0.png"]


def test_expand_explicit_file_any_extension(tree):
    notes = tree / "a" / "notes.txt"
    assert expand_paths([notes]) == [notes]


def test_expand_globs(tree):
    a = tree / "a"
    assert expand_paths([str(a / "*.png")]) == [a / "2.png"]
    assert expand_paths([str(tree / "**" / "*.png")]) == [a / "2.png", a / "sub" / "0.png"]
    assert expand_paths([str(tree / "?")]) == [
        a / "1.JPG", a / "2.png", a / "sub" / "0.png", tree / "b" / "y.webp", tree / "b" / "z.jpeg"
    ]
    with pytest.raises(InputError, match="nothing_here"):
        expand_paths([str(tree / "nothing_here*.png")])


def test_expand_list_file(tree):
    lst = tree / "lists" / "inputs.txt"
    lst.parent.mkdir()
    lst.write_text(
        "# my inputs\n\n../b/z.jpeg\n   \n" + str(tree / "a" / "2.png") + "\n../a/sub/*.png\n../b/z.jpeg\n"
    )
    assert expand_paths([f"@{lst}"]) == [
        lst.parent / "../b/z.jpeg", tree / "a" / "2.png", lst.parent / "../a/sub/0.png"
    ]
    with pytest.raises(InputError, match="missing.txt"):
        expand_paths([f"@{tree / 'missing.txt'}"])
    bad = tree / "lists" / "bad.txt"
    bad.write_text("nope.png\n")
    with pytest.raises(InputError, match="nope.png"):
        expand_paths([f"@{bad}"])


def test_expand_errors(tree):
    with pytest.raises(InputError, match="missing.jpg"):
        expand_paths([tree / "a", tree / "missing.jpg"])
    with pytest.raises(InputError, match=r"no images found.*\.jpg"):
        expand_paths([tree / "only_text"])
    with pytest.raises(InputError, match="no inputs"):
        expand_paths([])


def test_expand_custom_extensions(tree):
    assert expand_paths([tree / "b"], extensions=["webp"]) == [tree / "b" / "y.webp"]
    assert ".pgm" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS


def test_animated_webp_first_frame(tmp_path):
    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True, duration=50)
    assert load_image(path).getpixel((4, 4)) == (255, 0, 0)


def test_16bit_pgm_opened_as_mode_i(tmp_path):
    path = tmp_path / "deep.pgm"  # maxval 4095: PIL stretches to 0..65535 in mode 'I'
    path.write_bytes(b"P5\n3 1\n4095\n" + np.array([0, 4095, 2048], dtype=">u2").tobytes())
    assert np.asarray(load_image(path, "L")).ravel().tolist() == [0, 255, 128]
