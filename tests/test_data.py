"""Datasets and loaders: inference batches with failures, labeled folders, the digits split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionv3.data import loaders
from inceptionv3.data.datasets import (
    DIGITS_SEED,
    DIGITS_VAL_FRACTION,
    LabeledImages,
    digits,
    digits_split,
    image_folder,
    load_labeled,
)
from inceptionv3.data.loaders import (
    Batch,
    ImageFiles,
    collate_labeled,
    default_workers,
    image_batches,
    labeled_loader,
)
from inceptionv3.data.transforms import eval_transform
from inceptionv3.weights.preprocess import Preprocess

torch.set_num_threads(1)

PRE = Preprocess(input_size=8, resize_size=8)  # tiny: these tests are about plumbing, not pixels
TF = eval_transform(PRE)


def _img(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 8), (value, value, value)).save(path)
    return path


@pytest.fixture
def mixed_files(tmp_path):
    """7 inputs: good images with distinct grey levels, a zero-byte file and a text file at 2 and 5."""
    paths = []
    for i in range(7):
        if i == 2:
            p = tmp_path / "02.png"
            p.write_bytes(b"")
        elif i == 5:
            p = tmp_path / "05.jpg"
            p.write_text("not an image")
        else:
            p = _img(tmp_path / f"{i:02d}.png", 30 * i)
        paths.append(p)
    return paths


def _value(x: torch.Tensor) -> int:
    return round(float(x[0, 0, 0] * 0.5 + 0.5) * 255)  # undo mean/std 0.5


def test_image_files_items(mixed_files):
    ds = ImageFiles(mixed_files, TF)
    x, i, err = ds[1]
    assert x.shape == (3, 8, 8) and i == 1 and err is None
    assert ds[2] == (None, 2, "empty file (0 bytes)")
    assert ds[5] == (None, 5, "not an image PIL can read")


@pytest.mark.parametrize("workers", [0, 1])
def test_image_batches_order_and_failures(mixed_files, workers):
    batches = list(image_batches(mixed_files, TF, batch_size=3, workers=workers))
    assert all(isinstance(b, Batch) for b in batches)
    assert [b.indices for b in batches] == [[0, 1], [3, 4], [6]]
    assert [b.failures for b in batches] == [
        [(2, "empty file (0 bytes)")], [(5, "not an image PIL can read")], []
    ]
    assert batches[0].images.shape == (2, 3, 8, 8)
    seen = [_value(x) for b in batches for x in b.images]
    assert seen == [0, 30, 90, 120, 180]


def test_batch_of_only_failures(mixed_files):
    batches = list(image_batches(mixed_files[2:3], TF, batch_size=4, workers=0))
    assert len(batches) == 1
    assert batches[0].indices == [] and batches[0].images.numel() == 0
    assert batches[0].failures == [(0, "empty file (0 bytes)")]


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 0), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_default_workers_budget(monkeypatch, cores, expected):
    monkeypatch.setattr(loaders, "available_cores", lambda: cores)
    assert default_workers() == expected


def test_default_workers_real_machine():
    assert 0 <= default_workers() <= 4
    with pytest.raises(ValueError, match="workers"):
        list(image_batches([], TF, workers=-1))


# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


def test_digits_split_sizes_stratified_deterministic():
    from sklearn.datasets import load_digits

    assert (DIGITS_VAL_FRACTION, DIGITS_SEED) == (0.25, 0)
    train_x, _ = digits_split("train")
    val_x, val_y = digits_split("val")
    assert (len(train_x), len(val_x)) == (1347, 450)
    assert all(im.mode == "L" and im.size == (8, 8) for im in train_x[:5] + val_x[:5])
    full = Counter(load_digits().target.tolist())
    val_counts = Counter(val_y)
    for c in range(10):
        assert abs(val_counts[c] - full[c] * 0.25) <= 1  # stratified
    again_x, again_y = digits_split("val")
    assert again_y == val_y
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again_x, val_x))
    # pixel scaling: round(v * 255 / 16), so 16 -> 255 and 8 -> 128
    values = set(np.concatenate([np.asarray(im).ravel() for im in train_x]).tolist())
    assert max(values) == 255 and values <= {round(v * 255 / 16 + 1e-9) for v in range(17)}
    with pytest.raises(ValueError, match="split"):
        digits_split("test")


def test_digits_disjoint_and_complete():
    from sklearn.datasets import load_digits

    images = load_digits().images
    key = lambda a: np.round(a * 255 / 16).astype(np.uint8).tobytes()
    all_keys = Counter(key(a) for a in images)
    split_keys = Counter(np.asarray(im).tobytes() for s in ("train", "val") for im in digits_split(s)[0])
    assert split_keys == all_keys


def test_digits_dataset():
    ds = digits("val", eval_transform(Preprocess(input_size=75, resize_size=75), in_chans=1))
    assert len(ds) == 450 and ds.classes == [str(d) for d in range(10)]
    x, y = ds[0]
    assert x.shape == (1, 75, 75) and isinstance(y, int) and y == ds.targets[0]
    rgb = load_labeled("digits", "train", TF)
    assert len(rgb) == 1347 and rgb[0][0].shape == (3, 8, 8)


# ------------------------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------------------------


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            _img(root / name / f"{i}.png", 10 * i)
    return root


def test_image_folder(tmp_path):
    root = _folder(tmp_path / "ds", {"dog": 2, "cat": 3})
    _img(root / "cat" / "nested" / "deep.PNG", 5)
    (root / "cat" / "notes.txt").write_text("x")
    (root / ".cache").mkdir()
    ds = image_folder(root, TF)
    assert isinstance(ds, LabeledImages)
    assert ds.classes == ["cat", "dog"]
    assert ds.targets == [0, 0, 0, 0, 1, 1]
    assert Path(ds.samples[3][0]) == root / "cat" / "nested" / "deep.PNG"
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and y == 1


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        image_folder(tmp_path / "empty", TF)
    flat = tmp_path / "flat"
    _img(flat / "a.png", 1)
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_folder(flat, TF)
    root = _folder(tmp_path / "ds", {"cat": 1})
    (root / "dog").mkdir()
    (root / "dog" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=r"dog.*no images"):
        image_folder(root, TF)
    with pytest.raises(ValueError, match="not a folder"):
        image_folder(tmp_path / "nope", TF)


def test_load_labeled_single_folder_split(tmp_path):
    root = _folder(tmp_path / "ds", {"a": 5, "b": 5, "c": 10, "solo": 1})
    train = load_labeled(root, "train", TF, val_fraction=0.2, seed=0)
    val = load_labeled(root, "val", TF, val_fraction=0.2, seed=0)
    assert train.classes == val.classes == ["a", "b", "c", "solo"]
    assert Counter(val.targets) == {0: 1, 1: 1, 2: 2}  # per class; the single image stays in train
    assert Counter(train.targets) == {0: 4, 1: 4, 2: 8, 3: 1}
    train_paths, val_paths = {p for p, _ in train.samples}, {p for p, _ in val.samples}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 21
    assert load_labeled(root, "val", TF, val_fraction=0.2, seed=0).samples == val.samples
    other = {tuple(load_labeled(root, "val", TF, val_fraction=0.2, seed=s).samples) for s in range(1, 6)}
    assert len(other | {tuple(val.samples)}) > 1  # the seed matters
    with pytest.raises(ValueError, match="val_fraction"):
        load_labeled(root, "val", TF, val_fraction=1.0)


def test_load_labeled_train_val_folders(tmp_path):
    root = tmp_path / "ds"
    _folder(root / "train", {"a": 3, "b": 2})
    _folder(root / "val", {"a": 1, "b": 1})
    assert len(load_labeled(root, "train", TF)) == 5
    val = load_labeled(root, "val", TF)
    assert len(val) == 2 and val.classes == ["a", "b"]
    _folder(root / "val", {"c": 1})
    with pytest.raises(ValueError, match=r"only in val: \['c'\]"):
        load_labeled(root, "train", TF)
    with pytest.raises(ValueError, match="no such folder"):
        load_labeled(tmp_path / "missing", "train", TF)


# ------------------------------------------------------------------------------------------------
# labeled loaders
# ------------------------------------------------------------------------------------------------


def test_bad_image_skipped_and_counted(tmp_path, caplog):
    root = _folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "b" / "1.png").write_bytes(b"")
    ds = image_folder(root, TF)
    assert ds[4] is None
    assert "empty file" in caplog.text and "1.png" in caplog.text
    images, labels, skipped = collate_labeled([ds[i] for i in range(6)])
    assert images.shape == (5, 3, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1] and skipped == 1
    images, labels, skipped = collate_labeled([None, None])
    assert images.numel() == 0 and labels.dtype == torch.long and skipped == 2
    loader = labeled_loader(ds, batch_size=4, shuffle=False, workers=0)
    total = [(len(y), s) for _, y, s in loader]
    assert sum(n for n, _ in total) == 5 and sum(s for _, s in total) == 1


def test_labeled_loader_seeded_shuffle_and_drop_last():
    ds = torch.utils.data.TensorDataset(torch.arange(10).float().view(10, 1), torch.arange(10))

    def order(seed, workers=0):
        loader = labeled_loader(ds, batch_size=4, shuffle=True, workers=workers, seed=seed)
        return [y.tolist() for _, y, _ in loader]

    first = order(0)
    assert first == order(0) and sorted(y for batch in first for y in batch) == list(range(10))
    assert first != order(1)
    assert order(0, workers=1) == first
    kept = labeled_loader(ds, batch_size=4, shuffle=False, workers=0, drop_last=True)
    assert [len(y) for _, y, _ in kept] == [4, 4]


def _list_images(root, n_per_class=3):
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    rows = []
    for label in ("2", "10", "7"):
        for i in range(n_per_class):
            name = f"imgs/{label}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / name)
            rows.append((name, label))
    return rows


def test_csv_and_jsonl_lists(tmp_path):
    import json

    from inceptionv3.data.datasets import load_labeled
    rows = _list_images(tmp_path)
    (tmp_path / "all.csv").write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in rows))
    (tmp_path / "all.jsonl").write_text("".join(json.dumps({"path": p, "label": y}) + "\n" for p, y in rows))
    to_t = lambda im: torch.zeros(1)
    for name in ("all.csv", "all.jsonl"):
        tr = load_labeled(str(tmp_path / name), "train", to_t, val_fraction=0.34, seed=0)
        va = load_labeled(str(tmp_path / name), "val", to_t, val_fraction=0.34, seed=0)
        assert tr.classes == ["2", "7", "10"]                      # integer labels sort as numbers
        assert len(tr) + len(va) == 9 and len(va) == 3              # one of each class held out
        assert {p for p, _ in tr.samples} | {p for p, _ in va.samples} == {str(tmp_path / p) for p, _ in rows}
        assert sorted(y for _, y in va.samples) == [0, 1, 2]
        label_of = {str(tmp_path / p): y for p, y in rows}
        assert all(tr.classes[y] == label_of[p] for p, y in tr.samples)
    # A folder with train.csv and val.csv uses them; val labels must be training labels.
    (tmp_path / "train.csv").write_text("".join(f"{p},{y}\n" for p, y in rows[:6]))
    (tmp_path / "val.csv").write_text("".join(f"{p},{y}\n" for p, y in rows[6:]))
    with pytest.raises(ValueError, match="not among the training labels"):
        load_labeled(str(tmp_path), "val", to_t)
    (tmp_path / "val.csv").write_text("".join(f"{p},{y}\n" for p, y in rows[:2]))
    assert load_labeled(str(tmp_path), "val", to_t).classes == ["2", "10"]


def test_bad_lists_name_the_line(tmp_path):
    from inceptionv3.data.datasets import load_labeled
    to_t = lambda im: torch.zeros(1)
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,1\nonly-a-path\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2: expected 'path,label'"):
        load_labeled(str(bad), "train", to_t)
    bad.write_text("")
    with pytest.raises(ValueError, match="image list is empty"):
        load_labeled(str(bad), "train", to_t)
    bad.write_text("nowhere/a.png,1\nnowhere/b.png,2\n")
    with pytest.raises(ValueError, match="none of the 2 listed files exists"):
        load_labeled(str(bad), "train", to_t)
    j = tmp_path / "bad.jsonl"
    j.write_text('{"path": "a.png"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: expected a JSON object"):
        load_labeled(str(j), "train", to_t)
