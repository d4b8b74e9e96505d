"""Feature extraction over a folder of files, end to end, next to the model alone and to pytorch-fid.

Writes --images PNG files of --size px into a temporary folder, then measures in one process:

* ours, model only: the engine `features` builds (pooled 2048-d output, same precision, batch size and
  compute threads), timed on ready-made batches (median of --repeats);
* ours, end to end: `extract_features(folder)` + `save_features` as `inceptionv3 features` runs it
  (decoding and resizing in the loader, results written);
* pytorch-fid, model only and end to end: its `InceptionV3` (random FID-graph weights, as
  benchmarks/bench_fid.py builds them; its weights file cannot be downloaded here) and its own loop
  `get_activations` with its CLI's defaults (batch 50, min(cores, 8) workers).

End-to-end figures are marginal throughput: (N - n) / (T(N images) - T(n images)) with n one batch plus
the last, partial one, so the fixed costs every run pays once (engine build, worker start-up, a compile
for the partial batch's shape) cancel and what remains is the pipeline's steady rate over full batches,
comparable with the model-only rate. The whole-run wall time is reported too, and with
--cli both tools are also timed as fresh processes the way a user runs them.
Usage: python benchmarks/bench_end_to_end.py [--images 200] [--size 256] [--batch-size 32] [--json FILE]
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_fid import PYTORCH_FID_CLI, random_fid_state_dict, write_images

from inceptionv3.bench import harness
from inceptionv3.data.loaders import default_workers
from inceptionv3.data.paths import list_images
from inceptionv3.models.inception import inception_v3
from inceptionv3.runtime.files import write_text_atomic
from inceptionv3.runtime.threads import available_cores
from inceptionv3.tasks.features import extract_features, save_features
from inceptionv3.weights.io import save_model
from inceptionv3.weights.load import load_model
from inceptionv3.weights.registry import get_entry


def median_rate(fn, x: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    """Images per second of fn on batch x: batch / median call time."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def marginal(run, files: list[Path], batch: int) -> dict:
    """Steady img/s of run(files): (N - n) / (T(N) - T(n)), and the whole-run rate.

    n is one full batch plus the last, partial one (N mod batch images), so both runs pay the same fixed
    costs (building the engine, starting workers, compiling a static-shape backend for the partial
    batch's size) and their difference is N - n images in full batches. One untimed run of n images
    first fills the caches (the exported graph on disk; imports and compiled shapes in this process), so
    that their filling lands in neither timing.
    """
    n = min(len(files), batch + len(files) % batch)
    run(files[:n])
    t = time.perf_counter()
    run(files[:n])
    small = time.perf_counter() - t
    t = time.perf_counter()
    run(files)
    full = time.perf_counter() - t
    return {"img_per_s": (len(files) - n) / max(full - small, 1e-9), "wall_s": full,
            "wall_img_per_s": len(files) / full, "small_run_images": n, "small_run_s": small}


def ours(args, folder: Path, files: list[Path], model_file: Path, out_dir: Path) -> dict:
    model = load_model(model_file)
    kwargs = {}
    params = inspect.signature(extract_features).parameters
    for name in ("precision", "backend"):
        value = getattr(args, name)
        if value is not None and name in params:
            kwargs[name] = value
        elif value is not None:
            sys.exit(f"extract_features has no {name} parameter in this version")

    def run(paths: list[Path]) -> None:
        result = extract_features(paths, weights=model, layer="pool", batch_size=args.batch_size,
                                  workers=args.workers, device="cpu", **kwargs)
        assert len(result.paths) == len(paths), result.failures
        save_features(result, out_dir / "features.npz")

    e2e = marginal(run, files, args.batch_size)   # first, so model-only runs with the threads it set

    from inceptionv3.engine.engine import build_engine
    engine = build_engine(model, output="pool", precision=kwargs.get("precision", "fp32"),
                          backend=kwargs.get("backend", "torch"), device="cpu", batch_size=args.batch_size)
    size = model.meta.preprocess.input_size
    x = torch.randn(args.batch_size, 3, size, size)
    only = median_rate(engine, x, args.repeats)
    return {"model_only_img_per_s": only, "end_to_end": e2e, "engine": engine.describe(),
            "threads": torch.get_num_threads()}


def pytorch_fid(args, files: list[Path]) -> dict:
    from pytorch_fid import inception
    from pytorch_fid.fid_score import get_activations

    state = random_fid_state_dict()
    inception.load_state_dict_from_url = lambda *a, **k: state   # no download: the random FID graph
    model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    workers = min(available_cores(), 8)    # its CLI's default

    def run(paths: list[Path]) -> None:
        get_activations([str(p) for p in paths], model, args.fid_batch_size, 2048, "cpu", workers)

    e2e = marginal(run, files, args.fid_batch_size)
    x = torch.rand(args.fid_batch_size, 3, args.size, args.size)   # it resizes to 299 inside
    with torch.no_grad():
        only = median_rate(lambda b: model(b)[0], x, args.repeats)
    return {"model_only_img_per_s": only, "end_to_end": e2e, "workers": workers,
            "batch_size": args.fid_batch_size}


def cli_walls(args, folder: Path, model_file: Path, tmp: Path) -> dict:
    """Both tools as fresh processes, as a user runs them (start-up and model loading included)."""
    fid_weights = tmp / "fid_random.pth"
    torch.save(random_fid_state_dict(), fid_weights)
    cmds = {
        "inceptionv3 features": [sys.executable, "-m", "inceptionv3", "features", str(folder), "--weights",
                                 str(model_file), "--out", str(tmp / "cli.npz"), "--device", "cpu",
                                 "--batch-size", str(args.batch_size), "--no-progress"],
        "pytorch-fid --save-stats": [sys.executable, "-c", PYTORCH_FID_CLI, str(fid_weights), "--save-stats",
                                     str(folder), str(tmp / "fid_stats.npz"), "--device", "cpu"],
    }
    out = {}
    for name, cmd in cmds.items():
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out[name] = {"wall_s": wall, "img_per_s": args.images / wall}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=256, help="side of the generated PNGs (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="our batch size (default 32)")
    p.add_argument("--fid-batch-size", type=int, default=50, help="pytorch-fid's (default 50, its CLI's)")
    p.add_argument("--workers", type=int, default=None, help="our decode workers (default: the budget)")
    p.add_argument("--precision", default=None, help="passed to extract_features (default: its own)")
    p.add_argument("--backend", default=None, help="passed to extract_features (default: its own)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cli", action="store_true", help="also time both command lines as fresh processes")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "images"
        write_images(folder, args.images, args.size, seed=1)
        files = list_images(folder)
        net = inception_v3(aux_logits=False, init_weights=False)
        harness.random_state(net, 0)
        model_file = save_model(net.eval(), tmp / "random.safetensors",
                                preprocess=get_entry("imagenet").preprocess)
        threads_before = torch.get_num_threads()
        theirs = pytorch_fid(args, files)
        torch.set_num_threads(threads_before)
        mine = ours(args, folder, files, model_file, tmp)
        walls = cli_walls(args, folder, model_file, tmp) if args.cli else None

    e2e, e2e_fid = mine["end_to_end"]["img_per_s"], theirs["end_to_end"]["img_per_s"]
    results = {
        "images": args.images, "size": args.size, "batch_size": args.batch_size, "cores": available_cores(),
        "cpu": harness.cpu_info(), "versions": harness.versions(),
        "decode_workers": default_workers() if args.workers is None else args.workers,
        "ours": mine, "pytorch_fid": theirs, "cli": walls,
        "e2e_over_model_only": e2e / mine["model_only_img_per_s"],
        "e2e_over_pytorch_fid_e2e": e2e / e2e_fid,
    }
    print(f"{args.images} PNGs of {args.size} px, {results['cores']} cores, torch {torch.__version__}; "
          f"ours: {results['decode_workers']} decode workers, {mine['threads']} compute threads, "
          f"batch {args.batch_size}; pytorch-fid: {theirs['workers']} workers, batch {args.fid_batch_size}")
    print(f"  engine: {mine['engine']}")
    print(f"  {'':<14}{'model only':>12}{'end to end':>12}{'(whole run)':>13}{'e2e / model':>13}")
    for name, r in (("inceptionv3", mine), ("pytorch-fid", theirs)):
        e = r["end_to_end"]
        print(f"  {name:<14}{r['model_only_img_per_s']:>12.1f}{e['img_per_s']:>12.1f}"
              f"{e['wall_img_per_s']:>13.1f}"
              f"{e['img_per_s'] / r['model_only_img_per_s']:>12.0%}")
    print(f"  end to end: {results['e2e_over_model_only']:.0%} of our model-only rate (target >= 90%), "
          f"x{results['e2e_over_pytorch_fid_e2e']:.2f} pytorch-fid's (target >= 2)")
    if walls:
        for name, w in walls.items():
            print(f"  fresh process: {name:<26}{w['wall_s']:7.1f} s  ({w['img_per_s']:.1f} img/s)")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
