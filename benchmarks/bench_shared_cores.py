"""Do the "auto" precisions hold when another job shares the cores? One run, a competing load started here.

For each case the script times whole processes of the command line with the precision set to fp32,
bf16 and auto, alternating the order between repeats, while a busy-loop process keeps one core busy
(it is started by this script and stopped at the end, or after --load-seconds at the latest). Cases:

- train inception_mini on the digits, 75 px, --epochs epochs (`--amp off|bf16|auto`);
- train inception_v3 at 75 px, the same (`--amp ...`);
- features of inception_v3 at 299 px over --images generated PNGs (`--precision fp32|bf16|auto`,
  torch backend: the one where auto has a choice to make).

Each figure is the median wall time of --repeats processes, start-up included (what auto's timing costs is
part of it); the line under it says what auto decided in each of its processes. It prints auto's time over the better of fp32 and bf16 (target <= 1.1) and, with --quiet-too,
the same without the load. Two compute threads (`--threads 2`), as the commands choose on 2 cores.

Usage: python benchmarks/bench_shared_cores.py [--repeats 2] [--images 128] [--epochs 2] [--train-images N]
       [--quiet-too | --quiet-only] [--only CASE] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.1
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def inceptionv3_command() -> list[str]:
    script = shutil.which("inceptionv3", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "inceptionv3"]


def wall(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds the command took, and what its "auto" decided (the log line of the timing, if any)."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    decided = [line.strip() for line in res.stderr.splitlines() if "auto: " in line and "timed here" in line]
    return seconds, decided[-1] if decided else ""


def write_inputs(folder: Path, images: int) -> Path:
    """--images random PNGs of 320 px and a random inception_v3 weights file at 299 px."""
    import numpy as np
    import torch
    from PIL import Image

    from inceptionv3 import build_model
    from inceptionv3.weights.io import save_model
    from inceptionv3.weights.preprocess import Preprocess

    pngs = folder / "pngs"
    pngs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(pngs / f"{i:04d}.png")
    torch.manual_seed(0)
    model = build_model("inception_v3", num_classes=10, aux_logits=False)
    save_model(model, folder / "v3.safetensors", class_names=[str(i) for i in range(10)],
               preprocess=Preprocess(input_size=299, resize_size=342))
    return pngs


def cases(folder: Path, pngs: Path, train_images: int | None, epochs: int
          ) -> dict[str, tuple[str, dict[str, list[str]]]]:
    """name -> (the flag being compared, {value: command})."""
    cli = inceptionv3_command()

    def train(arch: str, amp: str) -> list[str]:
        out = folder / f"run-{arch}-{amp}"
        return [*cli, "train", "digits", "--arch", arch, "--image-size", "75", "--epochs", str(epochs),
                *(["--limit", str(train_images)] if train_images else []), "--threads", "2", "--amp", amp, "--out", str(out),
                "--overwrite", "--no-progress"]

    def features(precision: str) -> list[str]:
        return [*cli, "features", str(pngs), "--weights", str(folder / "v3.safetensors"), "--backend", "torch",
                "--precision", precision, "--threads", "2", "--workers", "0", "--no-progress",
                "--out", str(folder / f"features-{precision}.npy"), "--restart"]

    amps = {"fp32": "off", "bf16": "bf16", "auto": "auto"}
    return {
        "train inception_mini 75 px": ("--amp", {k: train("inception_mini", v) for k, v in amps.items()}),
        "train inception_v3 75 px": ("--amp", {k: train("inception_v3", v) for k, v in amps.items()}),
        "features inception_v3 299 px": ("--precision", {k: features(k) for k in amps}),
    }


def measure(commands: dict[str, list[str]], repeats: int, env: dict[str, str]
            ) -> tuple[dict[str, float], list[str]]:
    """Median seconds of each command over `repeats` alternating rounds, and what auto decided in each."""
    names = list(commands)
    times: dict[str, list[float]] = {n: [] for n in names}
    decided = []
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            seconds, line = wall(commands[n], env)
            times[n].append(seconds)
            if n == "auto":
                decided.append(line.split("] ")[-1] or "not timed")
    return {n: statistics.median(v) for n, v in times.items()}, decided


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--images", type=int, default=128, help="PNGs for the features case (auto times the precisions from 512 images; below, it takes bf16)")
    ap.add_argument("--train-images", type=int, default=None, help="default: all 1,347 training digits")
    ap.add_argument("--epochs", type=int, default=2,
                    help="training epochs (auto times the precisions over the run's first 8 steps)")
    ap.add_argument("--load-seconds", type=int, default=1800, help="the competing load stops by then")
    ap.add_argument("--quiet-too", action="store_true", help="also measure without the competing load")
    ap.add_argument("--quiet-only", action="store_true", help="measure without the competing load only")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "INCEPTIONV3_NUM_THREADS"}
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="iv3-cores-") as tmp:
        folder = Path(tmp)
        env["INCEPTIONV3_HOME"] = str(folder / "home")
        pngs = write_inputs(folder, args.images)
        todo = {n: c for n, c in cases(folder, pngs, args.train_images, args.epochs).items()
                if args.only is None or args.only in n}
        for loaded in ((False,) if args.quiet_only else (False, True) if args.quiet_too else (True,)):
            load = (subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=args.load_seconds)])
                    if loaded else None)
            try:
                for name, (flag, commands) in todo.items():
                    t, decided = measure(commands, args.repeats, env)
                    best = min(t["fp32"], t["bf16"])
                    row = {"case": name, "load": "one core busy" if loaded else "quiet", "flag": flag,
                           **{k: round(v, 2) for k, v in t.items()}, "auto_over_best": round(t["auto"] / best, 3),
                           "auto_decided": decided}
                    results.append(row)
                    print(f"{name:30s} {row['load']:14s} fp32 {t['fp32']:7.2f} s  bf16 {t['bf16']:7.2f} s  "
                          f"auto {t['auto']:7.2f} s  auto/best {row['auto_over_best']:.2f}"
                          f"{'' if row['auto_over_best'] <= TARGET or not loaded else '  (target <= 1.1 missed)'}"
                          f"\n    auto: {' | '.join(decided)}", flush=True)
            finally:
                if load is not None:
                    load.kill()
                    load.wait()
    loaded_rows = [r for r in results if r["load"] != "quiet"]
    worst = max(r["auto_over_best"] for r in loaded_rows or results)
    print(f"worst auto/best {'under load' if loaded_rows else 'quiet'}: {worst:.2f} (target <= {TARGET}): {'met' if worst <= TARGET else 'MISSED'}")
    if args.json:
        import torch
        Path(args.json).write_text(json.dumps({
            "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "rows": results, "worst_under_load": worst}, indent=2) + "\n")


if __name__ == "__main__":
    main()
