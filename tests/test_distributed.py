"""torchrun DDP: two gloo processes on the CPU train to the weights of one process with the same global
batch; the sharded sampler splits every global batch between ranks and can start mid-epoch."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inceptionv3.runtime.distributed import DistEnv, ShardedSampler, env_from_environ, shard_range, unwrap
from inceptionv3.training.config import TrainConfig
from inceptionv3.training.run import train
from inceptionv3.training.state import load_checkpoint

torch.set_num_threads(1)


def _batches(sampler: ShardedSampler) -> list[list[int]]:
    items = list(sampler)
    assert all(e == sampler.epoch for e, _ in items)
    idx = [i for _, i in items]
    return [idx[k: k + sampler.local_batch] for k in range(0, len(idx), sampler.local_batch)]


def test_ranks_split_each_global_batch():
    one = ShardedSampler(50, 8, DistEnv(), seed=3)
    two = [ShardedSampler(50, 8, DistEnv(rank=r, world_size=2), seed=3) for r in range(2)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 6 and two[0].local_batch == 4
    for s in [one, *two]:
        s.set_epoch(2)
    whole, halves = _batches(one), [_batches(s) for s in two]
    assert [a + b for a, b in zip(*halves)] == whole   # rank 0 then rank 1 = the single-process batch
    assert len({i for b in whole for i in b}) == 48    # no repeats; the incomplete last batch dropped
    one.set_epoch(3)
    assert _batches(one) != whole                      # a new order each epoch
    one.set_epoch(2, start_step=4)
    assert _batches(one) == whole[4:] and len(one) == 16


def test_sampler_sizes_and_environment():
    tiny = ShardedSampler(5, 8, DistEnv())
    assert tiny.steps_per_epoch == 1 and len(tiny) == 5
    with pytest.raises(ValueError, match="divisible"):
        ShardedSampler(50, 9, DistEnv(rank=0, world_size=2))
    with pytest.raises(ValueError, match="fewer than the global batch"):
        ShardedSampler(5, 8, DistEnv(rank=1, world_size=2))
    env = env_from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    assert env_from_environ({}) == DistEnv()
    with pytest.raises(ValueError, match="RANK=4"):
        env_from_environ({"RANK": "4", "WORLD_SIZE": "4"})
    net = torch.nn.Linear(2, 2)
    assert unwrap(net) is net


ARGS = ["--arch", "inception_mini", "--image-size", "32", "--epochs", "2", "--batch-size", "16",
        "--limit", "64", "--workers", "0", "--threads", "1", "--dropout", "0", "--deterministic",
        "--no-progress", "--amp", "off", "--no-channels-last"]


def test_two_gloo_processes_equal_one_process(tmp_path):
    # Dropout off: its masks are drawn per rank. Augmentation stays on: it is seeded per sample.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INCEPTIONV3_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "inceptionv3", "train", "digits", "--out", str(tmp_path / "ddp"), *ARGS]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr

    cfg = TrainConfig(data="digits", out=str(tmp_path / "one"), arch="inception_mini", image_size=32,
                      epochs=2, batch_size=16, limit=64, workers=0, threads=1, dropout=0.0,
                      deterministic=True, amp="off", channels_last=False)
    single = train(cfg, progress=False)
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ddp["world_size"] == 2 and len(ddp["rng"]) == 2 and ddp["global_step"] == 8
    want = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    for k, v in want.items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=0, atol=2e-5, msg=k)
    assert [h["train_acc1"] for h in ddp["history"]] == [h["train_acc1"] for h in single["history"]]
    assert [h["val_acc1"] for h in ddp["history"]] == [h["val_acc1"] for h in single["history"]]
    assert ddp["history"][-1]["train_loss"] == pytest.approx(single["history"][-1]["train_loss"], abs=1e-5)

    # SIGTERM to rank 0 alone, mid-epoch 1: both ranks stop after the same step and checkpoint; resumed
    # under torchrun, the run ends with the uninterrupted 2-process run's weights, bit for bit.
    run = tmp_path / "stopped"
    helper = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              str(Path(__file__).with_name("killable_train.py"))]
    stop_cfg = dataclasses.replace(cfg, out=str(run))
    proc = subprocess.run([*helper, json.dumps(stop_cfg.to_dict()), "3", "term0", str(tmp_path / "m")],
                          check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "stopped after epoch 1 step 3 of 4" in proc.stderr, proc.stderr[-3000:]
    assert [s["step"] for s in load_checkpoint(run / "last.pt")["epoch_state"]] == [3, 3]
    resume_cfg = dataclasses.replace(stop_cfg, resume=str(run))
    proc = subprocess.run([*helper, json.dumps(resume_cfg.to_dict()), "0", "term0", str(tmp_path / "m")],
                          check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(resumed[k], ddp["model"][k]) for k in resumed)


def test_shard_range_blocks_cover_the_input_in_order():
    for n, world in ((10, 3), (2, 4), (0, 2), (7, 1)):
        blocks = [shard_range(n, DistEnv(rank=r, world_size=world)) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INCEPTIONV3_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "inceptionv3", *args]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc


def test_two_process_commands_equal_one_process(tmp_path):
    """`torchrun -m inceptionv3 features` and `evaluate`: each rank takes a shard; the merged output is in
    input order and equal to one process's, also when resuming from rows an interrupted run kept."""
    from PIL import Image

    from inceptionv3.models.builder import build_model
    from inceptionv3.tasks.evaluate import evaluate
    from inceptionv3.tasks.features import extract_features
    from inceptionv3.weights.io import save_model
    from inceptionv3.weights.preprocess import Preprocess

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for c in "ab":
        (folder / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    (folder / "a" / "3.png").write_bytes(b"not an image")   # a failure, listed in input order too
    torch.manual_seed(0)
    weights = save_model(build_model("inception_mini", num_classes=2), tmp_path / "mini.safetensors",
                         class_names=["a", "b"], preprocess=Preprocess(input_size=32, resize_size=36))
    # A one-process run that crashed after two batches left rows in out.npz.partial; the two ranks
    # resume from them and compute the other half only.
    from inceptionv3.engine import runner
    from inceptionv3.tasks import features
    real_run = runner.run

    def crash(*args, **kwargs):
        for n, step in enumerate(real_run(*args, **kwargs)):
            if n == 2:
                raise RuntimeError("power cut")
            yield step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run", crash)
        mp.setattr(features, "FLUSH_ROWS", 2)
        with pytest.raises(RuntimeError, match="power cut"):
            extract_features([folder], weights=weights, batch_size=2, workers=0, device="cpu",
                             resume=tmp_path / "out.npz.partial")
    feats = _torchrun(["features", str(folder), "--weights", str(weights), "--out", "out.npz",
                       "--batch-size", "2", "--workers", "0", "--device", "cpu"], tmp_path)
    assert feats.returncode == 1 and feats.stdout.count("wrote 7 x") == 1   # rank 0 writes, once
    assert "4 images done, 4 to go" in feats.stderr and not (tmp_path / "out.npz.partial").exists()
    merged = np.load(tmp_path / "out.npz")
    single = extract_features([folder], weights=weights, batch_size=4, workers=0, device="cpu")
    assert merged["paths"].tolist() == single.paths and len(single.paths) == 7
    assert merged["failed_paths"].tolist() == [str(folder / "a" / "3.png")]
    np.testing.assert_allclose(merged["features"], single.features, rtol=0, atol=1e-6)

    ev = _torchrun(["evaluate", str(folder), "--weights", str(weights), "--split", "train", "--format", "json",
                    "--workers", "0", "--device", "cpu", "--crops", "10"], tmp_path)
    two = json.loads(ev.stdout)
    one = evaluate(str(folder), str(weights), split="train", workers=0, device="cpu", crops=10)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["n"] == one["n"] > 0 and two["skipped"] == one["skipped"]
    assert two["confusion"] == one["confusion"].tolist() and two["top1"] == pytest.approx(one["top1"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_class_balanced_order():
    from inceptionv3.training.setup import class_balanced_weights

    class Imbalanced(torch.utils.data.Dataset):
        targets = [0] * 90 + [1] * 10

    weights = class_balanced_weights(Imbalanced())
    assert weights[0] == pytest.approx(1 / 90) and weights[-1] == pytest.approx(1 / 10)
    one = ShardedSampler(100, 10, DistEnv(), seed=1, weights=weights)
    drawn = [i for _, i in one]
    assert 35 <= sum(i >= 90 for i in drawn) <= 65          # class 1 about half the time, not 10%
    two = [ShardedSampler(100, 10, DistEnv(rank=r, world_size=2), seed=1, weights=weights) for r in range(2)]
    halves = [_batches(s) for s in two]
    assert [a + b for a, b in zip(*halves)] == _batches(one)
