"""FID does not depend on how the work was split: batch sizes 1, 7, 50 and 64, a folder, a ZIP or an .npz of
the same images, and 1, 2 or 4 torchrun processes (CPU, gloo) agree to 1e-6 relative or better.

Why it holds: the engine's features of an image do not depend on the batch it runs in (checked here
bit for bit on the FID graph), the preprocessing runs on one thread per image wherever it runs, and
statistics accumulate in float64 and merge in rank order. The FID graph with random weights is read at
its 64-d tap on 32 px images (the 2048-d check uses two images) to keep the forward passes cheap.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from test_metrics import _fid_state_dict

from inceptionv3 import metrics
from inceptionv3.engine.options import engine_options

RTOL = 1e-6
N = 9   # per set: batches of 7 leave a remainder; 4 ranks get blocks of 3, 2, 2, 2

_RANKS_SCRIPT = r'''
import json, os, sys
import torch.distributed as dist
from inceptionv3 import metrics
a, b, weights, out = sys.argv[1:5]
model = metrics.load_metric_model(weights)
rank = int(os.environ["RANK"])

def score(world, **kw):
    r = metrics.fid(a, b, weights=model, dims=64, device="cpu", workers=0, **kw)
    with open(os.path.join(out, f"w{world}_r{rank}.json"), "w") as f:
        json.dump({"fid": r["fid"], "n": r["n"], "world": dist.get_world_size()}, f)

score(4)                                  # torchrun's 4 processes: joined and sharded by the pipeline
dist.destroy_process_group()
if rank < 2:                              # the same processes as a group of 2
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out, "store"), rank=rank,
                            world_size=2)
    score(2, distributed=True)
    dist.destroy_process_group()
'''


def _write(folder, seed: int) -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    images = []
    for i in range(N):
        small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)   # smooth blobs plus noise
        img = np.asarray(Image.fromarray(small).resize((32, 32), Image.BILINEAR), np.int16)
        img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:02d}.png")
        images.append(img)
    return images


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("invariance")
    weights = root / "fid_random.pth"
    torch.save(_fid_state_dict(), weights)
    a_images = _write(root / "a", 0)
    _write(root / "b", 1)
    with zipfile.ZipFile(root / "a.zip", "w") as z:
        for i in range(N):
            z.write(root / "a" / f"{i:02d}.png", f"00000/{i:02d}.png")
    np.savez(root / "a.npz", np.stack(a_images))
    model = metrics.load_metric_model(str(weights))
    return {"root": root, "weights": str(weights), "model": model,
            "net": metrics.FeatureNet(model, "pytorch-fid", 64, "cpu")}


def _fid(a: metrics.Stats, b: metrics.Stats) -> float:
    with pytest.warns(metrics.MetricWarning, match="covariance is singular"):
        return metrics.fid(a, b)["fid"]


def test_features_do_not_depend_on_the_batch(two_sets):
    net = metrics.FeatureNet(two_sets["model"], "pytorch-fid", 2048, "cpu")
    x = metrics.prepare(torch.from_numpy(np.load(two_sets["root"] / "a.npz")["arr_0"][:2]).permute(0, 3, 1, 2))
    alone = torch.cat([net.forward_prepared(x[i:i + 1])[0] for i in range(2)])
    assert torch.equal(net.forward_prepared(x)[0], alone)


def test_fid_does_not_depend_on_batch_size_or_format(two_sets):
    root, net = two_sets["root"], two_sets["net"]
    fids = {}
    for bs in (1, 7, 50, 64):
        fids[bs] = _fid(metrics.compute_stats(root / "a", net, batch_size=bs, workers=0),
                        metrics.compute_stats(root / "b", net, batch_size=bs, workers=0))
    assert fids[50] > 1e-3
    for bs, value in fids.items():
        assert value == pytest.approx(fids[50], rel=RTOL), (bs, fids)
    # The same images as a folder, a ZIP and an .npz: the same statistics, bit for bit; torch on two
    # threads, which would round the resize differently if a transform ran on them.
    net2 = metrics.FeatureNet(two_sets["model"], "pytorch-fid", 64,
                              options=engine_options(metrics.METRIC_OPTIONS, device="cpu", threads=2))
    b = metrics.compute_stats(root / "b", net, batch_size=7, workers=0)
    want = metrics.compute_stats(root / "a", net2, batch_size=7, workers=0)
    for source in ("a.zip", "a.npz"):
        got = metrics.compute_stats(str(root / source), net2, batch_size=7, workers=0)
        assert np.array_equal(got.mu, want.mu) and np.array_equal(got.sigma, want.sigma), source
        assert _fid(got, b) == _fid(want, b)


def test_fid_does_not_depend_on_the_number_of_processes(two_sets, tmp_path):
    root = two_sets["root"]
    one = _fid(metrics.compute_stats(root / "a", two_sets["net"], workers=0),
               metrics.compute_stats(root / "b", two_sets["net"], workers=0))
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INCEPTIONV3_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", str(script),
           str(root / "a"), str(root / "b"), two_sets["weights"], str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {(w, r): json.loads((tmp_path / f"w{w}_r{r}.json").read_text())
               for w, ranks in ((4, 4), (2, 2)) for r in range(ranks)}
    for (world, rank), r in results.items():
        assert r["world"] == world and r["n"] == [N, N]
        assert r["fid"] == pytest.approx(one, rel=RTOL), (world, rank, r["fid"], one)


def test_torchrun_prints_the_result_on_rank_0_only(two_sets):
    # Every rank holds the same result and warnings; only global rank 0 prints them, every rank exits 0.
    root = two_sets["root"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INCEPTIONV3_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "inceptionv3",
           "fid", str(root / "a"), str(root / "b"), "--weights", two_sets["weights"], "--dims", "64",
           "--device", "cpu", "--workers", "0", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("FID: ") == 1, proc.stdout
    warned = [line for line in proc.stderr.splitlines() if line.startswith("inceptionv3 fid: warning: ")]
    assert warned and len(warned) == len(set(warned)), proc.stderr[-3000:]   # 9 images, 64-d: singular


def test_torchrun_stats_writes_one_file_equal_to_one_process(two_sets, tmp_path):
    # Under torchrun the statistics are said once (rank 0 writes them); the file is what one process computes.
    root = two_sets["root"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INCEPTIONV3_NUM_THREADS": "1"}
    args = ["stats", str(root / "a"), "--weights", two_sets["weights"], "--dims", "64", "--device", "cpu",
            "--workers", "0", "--no-progress"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "inceptionv3", *args, "--out", str(tmp_path / "two.npz")],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1, two.stdout
    one = subprocess.run([sys.executable, "-m", "inceptionv3", *args, "--out", str(tmp_path / "one.npz")],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (metrics.load_stats(tmp_path / f"{n}.npz") for n in ("two", "one"))
    assert a.n == b.n == N
    np.testing.assert_allclose(a.mu, b.mu, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=RTOL, atol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "two.npz"]   # nothing else left
