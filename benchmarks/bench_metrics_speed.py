"""Whole-process time of `inceptionv3 fid` on a folder, a ZIP and an .npz of the same images, against
pytorch-fid and clean-fid on the same folder and weights, in one run.

Writes two sets of --images generated --size px PNGs (default 10,000 of 64 px) into a temporary folder (or
--workdir, reused by later runs), the same images as a ZIP of PNGs (StyleGAN/EDM dataset_tool layout,
stored) and as an uncompressed .npz (``arr_0``, N x H x W x 3, as ADM stores samples), and one random
FID-graph state dict that every tool loads (no download). Then, each as a fresh process on the CPU with
its default settings:

* `inceptionv3 fid A B` on the folders, the ZIPs and the .npz files (mode pytorch-fid), and
  `pytorch-fid A B` on the folders: the same FID to 1e-5 relative (the three inputs: identical);
* `inceptionv3 fid A B --mode clean` and clean-fid's `compute_fid(A, B, mode="clean")` with a feature
  extractor over the same weights (pytorch-fid's network: clean-fid's own loads a TorchScript file it
  downloads): the same FID to 1e-5 relative.

With --against-stats each tool scores the generated set A against precomputed reference statistics of B,
the common real job at half the images: `inceptionv3 fid A ref.npz`, `pytorch-fid A ref.npz`, and clean-fid's
`fid_folder` (what `compute_fid(A, dataset_name=..., dataset_split="custom")` runs) reading the reference
from its `get_reference_statistics`. The reference of each mode is made once, untimed, by `metrics.compute_stats`
and handed to every tool of that mode (pytorch-fid reads our files; clean-fid's own `make_custom_stats`
cannot take a feature extractor, so it would need clean-fid's downloaded network, and it writes into the
installed package), so the FIDs differ only by each tool's features of A.

It reports seconds, images/s (the images scored over the whole process) and the speed-ups, and the engine's
model-only rate (the metric engine the job runs, timed in this process on prepared 299 px batches
after its export is cached) with the share of it each whole process reaches (goal >= 90 %) and the share
the in-process pipeline reaches (start-up and model loading excluded). Targets: >= 2.5x pytorch-fid and
clean-fid; the ZIP and .npz no slower than the folder. --only runs a part (a long measurement can be split
into runs of a few minutes: the generated sets and weights are the same in every run).

Usage: python benchmarks/bench_metrics_speed.py [--images 10000] [--reference-images N] [--size 64] [--against-stats]
           [--only folder,zip,npz,pytorch-fid,clean,clean-fid,model,pipeline] [--repeats 1]
           [--workdir DIR] [--json FILE]
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

# clean-fid scoring a folder against custom reference statistics: its fid_folder, as compute_fid calls it
# for dataset_split="custom", with the reference read from the given file rather than its package folder.
CLEAN_FID_STATS_CLI = CLEAN_FID_CLI.split("from cleanfid import fid")[0] + """
import numpy as np
from cleanfid import fid
with np.load(b) as f:
    ref = f["mu"], f["sigma"]
fid.get_reference_statistics = lambda *args, **kwargs: ref
print("FID:", fid.fid_folder(a, "bench", "na", "custom", model=features, mode="clean", num_workers=12,
                             batch_size=32, device=torch.device("cpu"), verbose=False))
"""

# What --only picks from: the timed commands, the model-only rate and the in-process pipeline.
PARTS = ("folder", "zip", "npz", "pytorch-fid", "clean", "clean-fid", "model", "pipeline")
NAMES = {"folder": "inceptionv3 folder", "zip": "inceptionv3 zip", "npz": "inceptionv3 npz",
         "pytorch-fid": "pytorch-fid folder", "clean": "inceptionv3 clean folder",
         "clean-fid": "clean-fid folder"}


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


def warm_engine(weights: str, images: int) -> None:
    """Export (and cache) the graph a job of ``images`` runs, so no timed run pays the one-time export."""
    from inceptionv3 import metrics

    net = metrics.FeatureNet(weights, "pytorch-fid", 2048, "cpu")
    net.plan(images)
    net.forward_prepared(torch.zeros(1, 3, 299, 299))


def in_process(weights: str, a: Path, b: Path) -> dict:
    """``metrics.fid`` in this process: the pipeline without start-up and model loading."""
    from inceptionv3 import metrics
    model = metrics.load_metric_model(weights)
    t = time.perf_counter()
    r = metrics.fid(str(a), str(b), weights=model, device="cpu", progress=False)
    return {"s": time.perf_counter() - t, "fid": r["fid"]}


def make_sets(root: Path, images: int, reference_images: int, size: int) -> None:
    """The weights, both folders, their ZIPs and .npz files under ``root``; kept if a run made them."""
    done = root / "sets.done"
    if done.is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    torch.save(random_fid_state_dict(), root / "fid_random.pth")
    for name, seed, n in (("a", 1, images), ("b", 2, reference_images)):
        write_images(root / name, n, size, seed=seed)     # the same names each time: overwritten
        write_archives(root / name, root / f"{name}.zip", root / f"{name}.npz")
    done.write_text("")


def reference_stats(weights: str, folder: Path, out: Path, mode: str) -> Path:
    """Statistics of ``folder`` in ``mode`` (made once, untimed): the reference of --against-stats."""
    if not out.is_file():
        from inceptionv3 import metrics
        metrics.save_stats(metrics.compute_stats(str(folder), weights=weights, mode=mode, device="cpu",
                                                 progress=False), out)
    return out


def run(args: argparse.Namespace) -> dict:
    iv3 = [sys.executable, "-m", "inceptionv3"]
    with tempfile.TemporaryDirectory(prefix="bench_metrics_speed_") as tmp_name:
        root = Path(args.workdir) if args.workdir else Path(tmp_name)
        n_ref = args.reference_images or args.images
        tmp = root / (f"{args.images}x{args.size}" + (f"-ref{n_ref}" if n_ref != args.images else ""))
        make_sets(tmp, args.images, n_ref, args.size)
        env = {**os.environ, "INCEPTIONV3_HOME": str(root / "home")}   # the engine cache, warmed below
        os.environ["INCEPTIONV3_HOME"] = env["INCEPTIONV3_HOME"]
        weights = str(tmp / "fid_random.pth")
        a, b = tmp / "a", tmp / "b"
        scored = args.images if args.against_stats else args.images + n_ref
        ours_runs = any(k in args.only for k in ("folder", "zip", "npz", "clean"))
        if args.against_stats:
            modes = {"clean" if k in ("clean", "clean-fid") else "pytorch-fid" for k in args.only
                     if k not in ("model",)}
            refs = {m: reference_stats(weights, b, tmp / f"ref-{m}.npz", m) for m in sorted(modes)}
        model = model_only(weights, "pytorch-fid", scored, 50, args.model_rounds) if "model" in args.only else None
        if ours_runs:
            warm_engine(weights, scored)
        pipeline = in_process(weights, a, refs["pytorch-fid"] if args.against_stats else b) \
            if "pipeline" in args.only else None

        def ref(x: str, mode: str = "pytorch-fid") -> str:
            return str(refs[mode]) if args.against_stats else x

        def ours(x: str, y: str, *extra: str) -> list[str]:
            return [*iv3, "fid", x, y, "--weights", weights, "--device", "cpu", "--format", "json",
                    "--no-progress", *extra]

        every = {   # built for the parts asked for only: a reference exists for their modes alone
            "folder": lambda: ours(str(a), ref(str(b))),
            "zip": lambda: ours(str(tmp / "a.zip"), ref(str(tmp / "b.zip"))),
            "npz": lambda: ours(str(tmp / "a.npz"), ref(str(tmp / "b.npz"))),
            "pytorch-fid": lambda: [sys.executable, "-c", PYTORCH_FID_CLI, weights, str(a), ref(str(b)),
                                    "--device", "cpu"],
            "clean": lambda: ours(str(a), ref(str(b), "clean"), "--mode", "clean"),
            "clean-fid": lambda: [sys.executable, "-c", CLEAN_FID_STATS_CLI if args.against_stats else CLEAN_FID_CLI,
                                  weights, str(a), ref(str(b), "clean")],
        }
        cmds = {NAMES[k]: every[k]() for k in NAMES if k in args.only}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        loads: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}   # 1-min load at start, end
        fids: dict[str, float] = {}
        for i in range(args.repeats):
            for name, cmd in (cmds.items() if i % 2 == 0 else reversed(cmds.items())):
                before = os.getloadavg()[0]
                seconds, out = timed(cmd, env)
                after = os.getloadavg()[0]
                times[name].append(seconds)
                fids[name] = fid_of(out)
                loads[name].append((round(before, 2), round(after, 2)))
                print(f"  {name:<26}{seconds:8.1f} s  FID {fids[name]:.9g}  (load {before:.2f} -> "
                      f"{after:.2f})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(x: str, y: str) -> float | None:
        return med[x] / med[y] if x in med and y in med else None

    def rel(x: str, y: str) -> float | None:
        return abs(fids[x] - fids[y]) / abs(fids[y]) if x in fids and y in fids else None

    folder = NAMES["folder"]
    out = {
        "images_per_set": args.images, "reference_images": n_ref, "size": args.size, "repeats": args.repeats,
        "against_stats": args.against_stats, "images_scored": scored, "only": list(args.only),
        "weights": "random FID-graph state dict (.pth), loaded by every tool",
        "median_s": med, "all_s": times, "load_avg": loads, "fid": fids,
        "img_per_s": {k: scored / s for k, s in med.items()},
        "speedup": {"pytorch-fid": ratio(NAMES["pytorch-fid"], folder),
                    "clean-fid": ratio(NAMES["clean-fid"], NAMES["clean"]),
                    "zip_vs_folder": ratio(folder, NAMES["zip"]),
                    "npz_vs_folder": ratio(folder, NAMES["npz"])},
        "rel_diff": {"zip": rel(NAMES["zip"], folder), "npz": rel(NAMES["npz"], folder),
                     "pytorch-fid": rel(folder, NAMES["pytorch-fid"]),
                     "clean-fid": rel(NAMES["clean"], NAMES["clean-fid"])},
        "model_only": model,
    }
    if model is not None:
        out["share_of_model_rate"] = {k: scored / med[k] / model["img_per_s"] for k in med
                                      if k.startswith("inceptionv3") and "clean" not in k}
    if pipeline is not None:
        out["in_process_pipeline"] = {**pipeline, "img_per_s": scored / pipeline["s"]}
        if model is not None:
            out["in_process_pipeline"]["share_of_model_rate"] = scored / pipeline["s"] / model["img_per_s"]
        if folder in fids:
            out["rel_diff"]["in_process"] = abs(pipeline["fid"] - fids[folder]) / abs(fids[folder])
    return out


def report(r: dict) -> None:
    against = "against reference statistics of B" if r["against_stats"] else "A against B"
    print(f"{r['images_per_set']} + {r['reference_images']} PNGs of {r['size']} px, {against} "
          f"({r['images_scored']} images scored per run); {r['weights']}; median of {r['repeats']}")
    m = r["model_only"]
    if m is not None:
        print(f"  model only: {m['img_per_s']:.1f} img/s on {m['threads']} threads ({m['engine']})")
    p = r.get("in_process_pipeline")
    if p is not None:
        share = (f", {100 * p['share_of_model_rate']:.0f} % of the model-only rate (goal >= "
                 f"{100 * SHARE_TARGET:.0f} %)" if "share_of_model_rate" in p else "")
        print(f"  in-process pipeline (folders): {p['s']:.1f} s, {p['img_per_s']:.1f} img/s{share}")
    for name, seconds in r["median_s"].items():
        share = r.get("share_of_model_rate", {}).get(name)
        extra = f", {100 * share:.0f} % of the model-only rate" if share is not None else ""
        print(f"  {name:<26}{seconds:8.1f} s  {r['img_per_s'][name]:7.1f} img/s{extra}")
    s, d = r["speedup"], r["rel_diff"]
    for tool in ("pytorch-fid", "clean-fid"):
        if s[tool] is not None:
            ok = s[tool] >= SPEEDUP_TARGET and d[tool] <= FID_REL_TOLERANCE
            print(f"  vs {tool}: x{s[tool]:.2f} (target >= {SPEEDUP_TARGET}), FID relative difference "
                  f"{d[tool]:.1e} (target <= {FID_REL_TOLERANCE:g}): {'met' if ok else 'MISSED'}")
    for kind in ("zip", "npz"):
        if s[f"{kind}_vs_folder"] is not None:
            ok = s[f"{kind}_vs_folder"] >= 1.0 and d[kind] == 0.0
            print(f"  {kind} vs folder: x{s[f'{kind}_vs_folder']:.2f} (target >= 1), FID relative difference "
                  f"{d[kind]:.1e} (target 0): {'met' if ok else 'MISSED'}")


def parts_arg(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(PARTS)}")
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Run it on a quiet machine: other load moves every figure.")
    p.add_argument("--images", type=int, default=10_000, help="images per set (default 10,000)")
    p.add_argument("--reference-images", type=int, default=None,
                   help="images in the reference set B (default: --images); more than 2,048 keeps its "
                        "covariance full rank")
    p.add_argument("--size", type=int, default=64, help="side of the generated images (default 64)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each command (default 1)")
    p.add_argument("--model-rounds", type=int, default=10, help="timed batches of the model-only rate")
    p.add_argument("--against-stats", action="store_true",
                   help="score A against precomputed reference statistics of B (half the images per run)")
    p.add_argument("--only", type=parts_arg, default=PARTS, metavar="PART[,PART...]",
                   help=f"run only these parts: {', '.join(PARTS)} (default all)")
    p.add_argument("--workdir", default=None,
                   help="keep the generated sets, weights, references and engine cache here for later runs")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args()
    if args.images < 2 or args.repeats < 1 or (args.reference_images is not None and args.reference_images < 2):
        p.error("--images and --reference-images must be >= 2 and --repeats >= 1")
    # The allocator setting our metric commands make as they start (runtime.threads.prepare_process), for
    # the model-only rate timed in this process.
    from inceptionv3.runtime.threads import keep_freed_memory
    keep_freed_memory()
    results = run(args)
    from inceptionv3.bench import harness
    results["environment"] = {"cpu": harness.cpu_info(), "versions": harness.versions()}
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
