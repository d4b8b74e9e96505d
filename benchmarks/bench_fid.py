"""Wall time of `inceptionv3 fid A B` next to pytorch-fid on the same two folders, in one run.

Writes two folders of generated PNG images, then times each tool as a user runs it (a fresh process
each, model loading and the Fréchet distance included) with the same weights and pytorch-fid's
preprocessing, and checks that both print the same FID. By default both tools load one random FID-graph
state dict written here, so the benchmark runs offline; pass --weights pt_inception-2015-12-05-6726825d.pth
for the real network (the numbers change, the timings hardly).
Usage: python benchmarks/bench_fid.py [--images 200] [--size 128] [--batch-size 50] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# pytorch-fid as its own CLI runs it, with its weights download pointed at a local state dict.
PYTORCH_FID_CLI = """
import sys, torch
import pytorch_fid.inception as inception
weights = sys.argv[1]
inception.load_state_dict_from_url = lambda *a, **k: torch.load(weights, map_location="cpu")
from pytorch_fid.fid_score import main
sys.argv = ["pytorch-fid"] + sys.argv[2:]
main()
"""


def random_fid_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """FID-graph weights with O(1) activations: the bench harness's He-scaled convs and random batch norm."""
    from inceptionv3.bench.harness import random_state
    from inceptionv3.models.builder import FID_GRAPH, build_model

    model = build_model("inception_v3", init_weights=False, **FID_GRAPH)
    random_state(model, seed)
    return model.state_dict()


def write_images(folder: Path, n: int, size: int, seed: int) -> None:
    """Smooth random colour fields plus noise, like a generator's early samples."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 256, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8))
        arr = np.asarray(base.resize((size, size), Image.BICUBIC), np.int16)
        arr = np.clip(arr + rng.integers(-16, 17, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.png")


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="images per folder (default 200)")
    p.add_argument("--size", type=int, default=128, help="side of the generated images (default 128)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--dims", type=int, default=2048)
    p.add_argument("--weights", default=None, help="FID weights file for both tools (default: random)")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_fid_") as tmp:
        root = Path(tmp)
        weights = args.weights
        if weights is None:
            weights = str(root / "fid_random.pth")
            torch.save(random_fid_state_dict(), weights)
        a, b = root / "a", root / "b"
        write_images(a, args.images, args.size, seed=1)
        write_images(b, args.images, args.size, seed=2)
        env = dict(os.environ)
        ours_cmd = [sys.executable, "-m", "inceptionv3", "fid", str(a), str(b), "--weights", weights,
                    "--dims", str(args.dims), "--batch-size", str(args.batch_size), "--device", "cpu",
                    "--format", "json", "--no-progress"]
        theirs_cmd = [sys.executable, "-c", PYTORCH_FID_CLI, weights, str(a), str(b), "--device", "cpu",
                      "--dims", str(args.dims), "--batch-size", str(args.batch_size)]
        ours_s, ours_out = timed(ours_cmd, env)
        theirs_s, theirs_out = timed(theirs_cmd, env)

    ours_fid = json.loads(ours_out)["fid"]
    found = re.search(r"FID:\s+([-0-9.eE+naif]+)", theirs_out)
    theirs_fid = float(found.group(1)) if found else float("nan")
    rel = abs(ours_fid - theirs_fid) / abs(theirs_fid)
    results = {
        "images_per_folder": args.images, "image_size": args.size, "dims": args.dims,
        "batch_size": args.batch_size, "cores": len(os.sched_getaffinity(0)),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "weights": "random FID-graph state dict" if args.weights is None else args.weights,
        "inceptionv3_s": ours_s, "pytorch_fid_s": theirs_s, "speedup": theirs_s / ours_s,
        "inceptionv3_fid": ours_fid, "pytorch_fid_fid": theirs_fid, "fid_rel_diff": rel,
    }
    print(f"{args.images} + {args.images} images of {args.size} px, {args.dims}-d, "
          f"{results['cores']} cores, torch {torch.__version__}")
    print(f"  inceptionv3 fid   {ours_s:8.1f} s   FID {ours_fid:.6f}")
    print(f"  pytorch-fid       {theirs_s:8.1f} s   FID {theirs_fid:.6f}")
    print(f"  speed-up x{results['speedup']:.2f}; relative FID difference {rel:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
