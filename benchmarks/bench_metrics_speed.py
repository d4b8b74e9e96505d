"""Whole-process time of `inceptionv3 fid` on a folder, a ZIP and an .npz of the same images, against
pytorch-fid and clean-fid on the same folder and weights, in one run.

Writes two sets of --images generated --size px PNGs (default 10,000 of 64 px) into a temporary folder, the
same images as a ZIP of PNGs (StyleGAN/EDM dataset_tool layout, stored) and as an uncompressed .npz
(``arr_0``, N x H x W x 3, as ADM stores samples), and one random FID-graph state dict that every tool
loads (no download). Then, each as a fresh process on the CPU with its default settings:

* `inceptionv3 fid A B` on the folders, the ZIPs and the .npz files (mode pytorch-fid), and
  `pytorch-fid A B` on the folders: the same FID to 1e-5 relative (the three inputs: identical);
* `inceptionv3 fid A B --mode clean` and clean-fid's `compute_fid(A, B, mode="clean")` with a feature
  extractor over the same weights (pytorch-fid's network: clean-fid's own loads a TorchScript file it
  downloads): the same FID to 1e-5 relative.

It reports seconds, images/s (both sets over the whole process) and the speed-ups, and the engine's
model-only rate (the metric engine the job runs, timed in this process on prepared 299 px batches
after its export is cached) with the share of it each whole process reaches (goal >= 90 %) and the share
the in-process pipeline reaches (start-up and model loading excluded). Targets: >= 2.5x pytorch-fid and
clean-fid; the ZIP and .npz no slower than the folder.

Usage: python benchmarks/bench_metrics_speed.py [--images 10000] [--size 64] [--repeats 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from bench_fid import PYTORCH_FID_CLI, random_fid_state_dict, timed, write_images
from PIL import Image

SPEEDUP_TARGET = 2.5
SHARE_TARGET = 0.9
FID_REL_TOLERANCE = 1e-5

# clean-fid's compute_fid as a user calls it on two folders; its feature extractor is pytorch-fid's FID
# network over the given state dict, fed clean-fid's [0, 255] 299 px images as (x - 128) / 128 (what
# clean-fid's TorchScript network does inside).
CLEAN_FID_CLI = """
import sys, torch
import pytorch_fid.inception as inception
weights, a, b = sys.argv[1:4]
inception.load_state_dict_from_url = lambda *x, **k: torch.load(weights, map_location="cpu")
net = inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()
def features(x):
    with torch.no_grad():
        return net((x - 128) / 128)[0].squeeze(-1).squeeze(-1)
from cleanfid import fid
print("FID:", fid.compute_fid(a, b, mode="clean", custom_feat_extractor=features, device=torch.device("cpu"),
                              verbose=False))
"""


def write_archives(folder: Path, zip_path: Path, npz_path: Path) -> None:
    """The folder's PNGs as a stored ZIP (00000/img00000000.png, ...) and their pixels as an .npz."""
    files = sorted(folder.glob("*.png"))
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as z:
        for i, f in enumerate(files):
            z.write(f, f"{i // 1000:05d}/img{i:08d}.png")
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    with open(npz_path, "wb") as f:
        np.savez(f, pixels)


def fid_of(out: str) -> float:
    try:
        return float(json.loads(out)["fid"])
    except ValueError:
        found = re.search(r"FID:\s+([-0-9.eE+naif]+)", out)
        return float(found.group(1)) if found else float("nan")


def model_only(weights: str, mode: str, images: int, batch_size: int, rounds: int) -> dict:
    """The metric engine's img/s on prepared 299 px batches: the engine a job of ``images`` runs."""
    from inceptionv3 import metrics
    from inceptionv3.engine.inputs import thread_budget

    net = metrics.FeatureNet(weights, mode, 2048, "cpu")
    net.plan(images)
    thread_budget(net.options)      # the compute threads a job leaves the model
    x = torch.rand(batch_size, 3, 299, 299) * 2 - 1
    net.forward_prepared(x)         # warm-up (and the export, once)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        net.forward_prepared(x)
        times.append(time.perf_counter() - t)
    return {"engine": net.engine.describe(), "img_per_s": batch_size / statistics.median(times),
            "threads": torch.get_num_threads()}


def in_process(weights: str, a: Path, b: Path) -> dict:
    """``metrics.fid`` on the folders in this process: the pipeline without start-up and model loading."""
    from inceptionv3 import metrics
    model = metrics.load_metric_model(weights)
    t = time.perf_counter()
    r = metrics.fid(str(a), str(b), weights=model, device="cpu", progress=False)
    return {"s": time.perf_counter() - t, "fid": r["fid"]}


def run(args: argparse.Namespace) -> dict:
    iv3 = [sys.executable, "-m", "inceptionv3"]
    with tempfile.TemporaryDirectory(prefix="bench_metrics_speed_") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "INCEPTIONV3_HOME": str(tmp / "home")}   # a fresh engine cache, warmed below
        os.environ["INCEPTIONV3_HOME"] = env["INCEPTIONV3_HOME"]
        weights = str(tmp / "fid_random.pth")
        torch.save(random_fid_state_dict(), weights)
        sets = {}
        for name, seed in (("a", 1), ("b", 2)):
            folder = tmp / name
            write_images(folder, args.images, args.size, seed=seed)
            write_archives(folder, tmp / f"{name}.zip", tmp / f"{name}.npz")
            sets[name] = folder
        a, b = sets["a"], sets["b"]
        total = 2 * args.images
        model = model_only(weights, "pytorch-fid", total, 50, args.model_rounds)
        pipeline = in_process(weights, a, b)

        def ours(x: str, y: str, *extra: str) -> list[str]:
            return [*iv3, "fid", x, y, "--weights", weights, "--device", "cpu", "--format", "json",
                    "--no-progress", *extra]

        cmds = {
            "inceptionv3 folder": ours(str(a), str(b)),
            "inceptionv3 zip": ours(str(tmp / "a.zip"), str(tmp / "b.zip")),
            "inceptionv3 npz": ours(str(tmp / "a.npz"), str(tmp / "b.npz")),
            "pytorch-fid folder": [sys.executable, "-c", PYTORCH_FID_CLI, weights, str(a), str(b),
                                   "--device", "cpu"],
            "inceptionv3 clean folder": ours(str(a), str(b), "--mode", "clean"),
            "clean-fid folder": [sys.executable, "-c", CLEAN_FID_CLI, weights, str(a), str(b)],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        fids: dict[str, float] = {}
        for i in range(args.repeats):
            for name, cmd in (cmds.items() if i % 2 == 0 else reversed(cmds.items())):
                seconds, out = timed(cmd, env)
                times[name].append(seconds)
                fids[name] = fid_of(out)
                print(f"  {name:<26}{seconds:8.1f} s  FID {fids[name]:.6f}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}

    def rel(x: str, y: str) -> float:
        return abs(fids[x] - fids[y]) / abs(fids[y])

    return {
        "images_per_set": args.images, "size": args.size, "repeats": args.repeats,
        "weights": "random FID-graph state dict (.pth), loaded by every tool",
        "median_s": med, "all_s": times, "fid": fids,
        "img_per_s": {k: total / s for k, s in med.items()},
        "speedup": {"pytorch-fid": med["pytorch-fid folder"] / med["inceptionv3 folder"],
                    "clean-fid": med["clean-fid folder"] / med["inceptionv3 clean folder"],
                    "zip_vs_folder": med["inceptionv3 folder"] / med["inceptionv3 zip"],
                    "npz_vs_folder": med["inceptionv3 folder"] / med["inceptionv3 npz"]},
        "rel_diff": {"zip": rel("inceptionv3 zip", "inceptionv3 folder"),
                     "npz": rel("inceptionv3 npz", "inceptionv3 folder"),
                     "pytorch-fid": rel("inceptionv3 folder", "pytorch-fid folder"),
                     "clean-fid": rel("inceptionv3 clean folder", "clean-fid folder"),
                     "in_process": abs(pipeline["fid"] - fids["inceptionv3 folder"]) / abs(fids["inceptionv3 folder"])},
        "model_only": model,
        "share_of_model_rate": {k: total / med[k] / model["img_per_s"] for k in med if k.startswith("inceptionv3")
                                and "clean" not in k},
        "in_process_pipeline": {**pipeline, "img_per_s": total / pipeline["s"],
                                "share_of_model_rate": total / pipeline["s"] / model["img_per_s"]},
    }


def report(r: dict) -> None:
    print(f"{r['images_per_set']} + {r['images_per_set']} PNGs of {r['size']} px; {r['weights']}; "
          f"median of {r['repeats']}")
    m = r["model_only"]
    print(f"  model only: {m['img_per_s']:.1f} img/s on {m['threads']} threads ({m['engine']})")
    p = r["in_process_pipeline"]
    print(f"  in-process pipeline (folders): {p['s']:.1f} s, {p['img_per_s']:.1f} img/s, "
          f"{100 * p['share_of_model_rate']:.0f} % of the model-only rate (goal >= {100 * SHARE_TARGET:.0f} %)")
    for name, seconds in r["median_s"].items():
        share = r["share_of_model_rate"].get(name)
        extra = f", {100 * share:.0f} % of the model-only rate" if share is not None else ""
        print(f"  {name:<26}{seconds:8.1f} s  {r['img_per_s'][name]:7.1f} img/s{extra}")
    s, d = r["speedup"], r["rel_diff"]
    for tool in ("pytorch-fid", "clean-fid"):
        ok = s[tool] >= SPEEDUP_TARGET and d[tool] <= FID_REL_TOLERANCE
        print(f"  vs {tool}: x{s[tool]:.2f} (target >= {SPEEDUP_TARGET}), FID relative difference "
              f"{d[tool]:.1e} (target <= {FID_REL_TOLERANCE:g}): {'met' if ok else 'MISSED'}")
    for kind in ("zip", "npz"):
        ok = s[f"{kind}_vs_folder"] >= 1.0 and d[kind] == 0.0
        print(f"  {kind} vs folder: x{s[f'{kind}_vs_folder']:.2f} (target >= 1), FID relative difference "
              f"{d[kind]:.1e} (target 0): {'met' if ok else 'MISSED'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Run it on a quiet machine: other load moves every figure.")
    p.add_argument("--images", type=int, default=10_000, help="images per set (default 10,000)")
    p.add_argument("--size", type=int, default=64, help="side of the generated images (default 64)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each command (default 1)")
    p.add_argument("--model-rounds", type=int, default=10, help="timed batches of the model-only rate")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args()
    if args.images < 2 or args.repeats < 1:
        p.error("--images must be >= 2 and --repeats >= 1")
    results = run(args)
    from inceptionv3.bench import harness
    results["environment"] = {"cpu": harness.cpu_info(), "versions": harness.versions()}
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
