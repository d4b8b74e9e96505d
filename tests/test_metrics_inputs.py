"""Sample sets as generators store them: ZIP archives, .npy/.npz arrays and WebDataset tar shards give the
statistics of the same images in a folder, through the Python API and every metric command; bad members
are named and skipped, bad arrays and missing shards get one line.

The metric network is the FID graph with random weights read at its 64-d tap, on 32 px images: cheap.
"""
from __future__ import annotations

import json
import logging
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from test_metrics import _fid_state_dict

from inceptionv3 import metrics
from inceptionv3.cli.main import main
from inceptionv3.data.samples import ArrayImages, ZipImages, is_sample_set

N = 4


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same N images as a folder of PNGs, a dataset_tool ZIP, .npz / .npy arrays and two tar shards."""
    root = tmp_path_factory.mktemp("samples")
    weights = root / "fid_random.pth"
    torch.save(_fid_state_dict(), weights)
    images = np.random.default_rng(0).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    folder = root / "folder"
    folder.mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"img{i:08d}.png")
    # StyleGAN/EDM dataset_tool: 00000/img00000000.png ..., labels in dataset.json.
    with zipfile.ZipFile(root / "set.zip", "w") as z:
        for i in range(N):
            z.write(folder / f"img{i:08d}.png", f"00000/img{i:08d}.png")
        z.writestr("dataset.json", json.dumps({"labels": [[f"00000/img{i:08d}.png", i % 2] for i in range(N)]}))
    np.savez(root / "adm.npz", images, np.arange(N))                      # arr_0 images, arr_1 labels
    np.savez_compressed(root / "packed.npz", arr_0=images)
    np.save(root / "chw.npy", np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    for s, part in enumerate((range(3), range(3, N))):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as t:
            for i in part:
                t.add(folder / f"img{i:08d}.png", f"{i:06d}.png")
    net = metrics.FeatureNet(str(weights), "pytorch-fid", 64, "cpu")
    return {"root": root, "weights": str(weights), "folder": folder, "images": images, "net": net}


def test_every_format_gives_the_folders_statistics(sets, caplog):
    root, net = sets["root"], sets["net"]
    want = metrics.compute_stats(sets["folder"], net, workers=0, batch_size=3)
    sources = ["set.zip", "adm.npz", "packed.npz", "chw.npy", "shard-{000..001}.tar", "shard-*.tar"]
    with caplog.at_level(logging.INFO, logger="inceptionv3"):
        for name in sources:
            got = metrics.compute_stats(str(root / name), net, workers=0, batch_size=3)
            assert got.n == N and got.meta["failed"] == 0, name
            assert np.array_equal(got.mu, want.mu) and np.array_equal(got.sigma, want.sigma), name
        # Decode workers (one process) give the same numbers.
        got = metrics.compute_stats(str(root / "set.zip"), net, workers=1, batch_size=3)
        assert np.array_equal(got.sigma, want.sigma)
    log = caplog.text
    assert f"ZIP archive of {N} images, {N} labelled (dataset.json)" in log
    assert f"{N} images of 32 x 32 x 3 under arr_0, N x H x W x C (as ADM stores samples), memory-mapped" in log
    assert f"packed.npz: {N} images of 32 x 32 x 3 under arr_0, N x H x W x C (as ADM stores samples), " \
           f"compressed, read into memory" in log
    assert "N x C x H x W (channels first), memory-mapped" in log
    assert "2 tar shard(s), read with webdataset" in log
    # The memory map reads the member where np.savez stored it.
    adm = ArrayImages(root / "adm.npz")
    assert adm.layout.offset is not None and adm.layout.member == "arr_0"
    assert np.array_equal(adm._array(), sets["images"])
    assert ZipImages(root / "set.zip").labels == [0, 1, 0, 1]


def test_statistics_npz_stays_statistics(sets, tmp_path, caplog):
    net = sets["net"]
    stats_file = tmp_path / "ref.npz"
    metrics.save_stats(metrics.compute_stats(str(sets["root"] / "adm.npz"), net, workers=0), stats_file)
    assert not is_sample_set(stats_file) and is_sample_set(sets["root"] / "adm.npz")
    with caplog.at_level(logging.INFO, logger="inceptionv3"):
        loaded = metrics.compute_stats(stats_file, net)
    assert loaded.source == str(stats_file) and "ref.npz: a statistics file (mu, sigma), not images" in caplog.text
    with pytest.warns(metrics.MetricWarning, match="covariance is singular"):
        same = metrics.fid(str(sets["root"] / "adm.npz"), stats_file, weights=sets["weights"], device="cpu",
                           workers=0)
    assert abs(same["fid"]) < 1e-6 and same["dims"] == 64 and same["n"] == [N, N]


def test_bad_members_are_named_and_the_rest_go_on(sets, tmp_path, caplog):
    folder = sets["folder"]
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as z:
        for i in range(3):
            z.write(folder / f"img{i:08d}.png", f"img{i}.png")
        z.writestr("broken.png", b"\x89PNG not really")
        z.writestr("notes.txt", "not an image: not a member the set reads")
        z.writestr("__MACOSX/._img0.png", b"resource fork")
    bad_tar = tmp_path / "bad.tar"
    with tarfile.open(bad_tar, "w") as t:
        t.add(folder / "img00000000.png", "a.png")
        t.add(folder / "img00000001.png", "b.png")
        t.add(bad_zip, "c.json")                      # a sample without an image member
        t.add(bad_zip, "d.jpg")                       # an image member that is not an image
    with caplog.at_level(logging.WARNING, logger="inceptionv3"):
        zs = metrics.compute_stats(str(bad_zip), sets["net"], workers=0)
        ts = metrics.compute_stats(str(bad_tar), sets["net"], workers=1)
    assert (zs.n, zs.meta["failed"], ts.n, ts.meta["failed"]) == (3, 1, 2, 2)
    assert f"skipped {bad_zip}:broken.png: " in caplog.text
    assert f"skipped {bad_tar}:c: no image member (has json)" in caplog.text
    assert f"skipped {bad_tar}:d.jpg: " in caplog.text


def test_metric_commands_take_every_format(sets, tmp_path, capsys):
    root = sets["root"]
    common = ["--weights", sets["weights"], "--device", "cpu", "--workers", "0", "--no-progress"]
    out = tmp_path / "shards.npz"
    assert main(["stats", str(root / "shard-{000..001}.tar"), "--out", str(out), "--dims", "64", *common]) == 0
    assert f"64-d statistics of {N} images" in capsys.readouterr().out
    assert main(["fid", str(root / "set.zip"), str(out), "--format", "json", *common]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(0, abs=1e-6)
    assert main(["kid", str(root / "chw.npy"), str(root / "packed.npz"), "--dims", "64", "--kid-subset-size",
                 "2", "--kid-subsets", "2", *common]) == 0
    assert capsys.readouterr().out.startswith("KID: ")


def test_bad_sample_sets_get_one_line(sets, tmp_path, capsys):
    common = ["--weights", sets["weights"], "--device", "cpu", "--workers", "0", "--no-progress", "--dims", "64"]
    floats = tmp_path / "floats.npz"
    np.savez(floats, np.random.default_rng(0).random((3, 8, 8, 3)))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((3, 64), np.uint8))
    labels = tmp_path / "labels.npz"
    np.savez(labels, labels=np.arange(3), names=np.array(["a", "b", "c"]))
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w") as z:
        z.writestr("readme.txt", "no images")
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"plain text")
    cases = [(floats, "float64 images; image arrays must be uint8"),
             (flat, "is not a batch of images; expected N x H x W x 3"),
             (labels, "no image array among the members ['labels', 'names']"),
             (empty_zip, "no images in the archive"),
             (not_zip, "not a readable ZIP archive"),
             (tmp_path / "shard-{000..002}.tar", "shard-000.tar: no such shard (and 2 more)")]
    for source, message in cases:
        assert main(["stats", str(source), "--out", str(tmp_path / "x.npz"), *common]) == 2, source
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(ValueError, match="a sample set is a source of its own"):
        metrics.compute_stats([sets["root"] / "set.zip", sets["folder"]], sets["net"])
