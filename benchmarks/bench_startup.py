"""Start-up and whole-process wall times of the command line, each next to its reference, in one run.

Default mode: fresh processes of `python -c "import torch"`, `inceptionv3 --help`, every
`inceptionv3 COMMAND --help` and `python -c "import inceptionv3"`, run in turn --repeats times (after one
untimed round that warms the file cache); each figure is the median. It prints the ratio of
`inceptionv3 --help` to `import torch` (target <= 0.1): the help must not pay for torch.

--whole: what a user waits for, start-up and model loading included. Writes 120 JPEGs of --size px and
two folders of 200 PNGs into a temporary folder, saves one random FID-graph state dict (pytorch-fid's
FID network, as benchmarks/bench_fid.py builds it) that both tools load, and times, alternating which
tool goes first, `inceptionv3 features` against `pytorch-fid --save-stats` on the JPEGs and
`inceptionv3 fid A B` against `pytorch-fid A B` on the PNGs, both with their default settings on the CPU.
It prints pytorch-fid's time over ours (targets: features >= 2.0, fid >= 2.5) and checks that the two
FIDs agree (relative difference <= 1e-5).

Usage: python benchmarks/bench_startup.py [--repeats 5] [--whole [--jpegs 120] [--pngs 200] [--size 256]]
       [--json FILE]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inceptionv3.cli.main import COMMANDS

HELP_TARGET = 0.1           # inceptionv3 --help / import torch
FEATURES_TARGET = 2.0       # pytorch-fid --save-stats / inceptionv3 features
FID_TARGET = 2.5            # pytorch-fid A B / inceptionv3 fid A B
FID_REL_TOLERANCE = 1e-5


def inceptionv3_command() -> list[str]:
    """The installed `inceptionv3` script beside this interpreter, else `python -m inceptionv3`."""
    script = shutil.which("inceptionv3", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "inceptionv3"]


def wall(cmd: list[str]) -> float:
    """Seconds a fresh process of ``cmd`` takes; a failure ends the benchmark with its stderr."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def startup(repeats: int) -> dict:
    """Median wall time of each start-up command, measured in turn so drift hits them all alike."""
    iv3 = inceptionv3_command()
    names = [importlib.import_module(f"inceptionv3.cli.{m}").NAME for m in COMMANDS]
    cmds = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "inceptionv3 --help": [*iv3, "--help"],
        **{f"inceptionv3 {name} --help": [*iv3, name, "--help"] for name in names},
        "python -c 'import inceptionv3'": [sys.executable, "-c", "import inceptionv3"],
    }
    for cmd in cmds.values():   # warm the file cache; not timed
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            times[name].append(wall(cmd))
    medians = {name: statistics.median(t) for name, t in times.items()}
    torch_s = medians["python -c 'import torch'"]
    slowest = max((n for n in medians if n.endswith(" --help")), key=medians.__getitem__)
    return {"repeats": repeats, "median_s": medians, "all_s": times,
            "help_over_import_torch": medians["inceptionv3 --help"] / torch_s,
            "slowest_help": slowest, "slowest_help_over_import_torch": medians[slowest] / torch_s}


def _jpegs(folder: Path, n: int, size: int) -> None:
    """``n`` JPEGs of ``size`` px: bench_fid's generated images, re-saved as JPEG."""
    from bench_fid import write_images
    from PIL import Image

    write_images(folder, n, size, seed=3)
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as img:
            img.save(png.with_suffix(".jpg"), quality=90)
        png.unlink()


def _fid_value(out: str, pattern: str) -> float:
    found = re.search(pattern, out)
    return float(found.group(1)) if found else float("nan")


def whole(args: argparse.Namespace) -> dict:
    """Both tools as fresh processes on the same files and weights, alternating which goes first."""
    import torch
    from bench_fid import PYTORCH_FID_CLI, random_fid_state_dict, timed, write_images

    iv3 = inceptionv3_command()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp_name:
        tmp = Path(tmp_name)
        weights = str(tmp / "fid_random.pth")
        torch.save(random_fid_state_dict(), weights)
        jpegs, a, b = tmp / "jpegs", tmp / "a", tmp / "b"
        _jpegs(jpegs, args.jpegs, args.size)
        write_images(a, args.pngs, args.size, seed=1)
        write_images(b, args.pngs, args.size, seed=2)

        def features_ours(i: int) -> list[str]:
            return [*iv3, "features", str(jpegs), "--weights", weights, "--out", str(tmp / f"ours_{i}.npz"),
                    "--device", "cpu", "--no-progress"]

        def features_theirs(i: int) -> list[str]:
            return [sys.executable, "-c", PYTORCH_FID_CLI, weights, "--save-stats", str(jpegs),
                    str(tmp / f"theirs_{i}.npz"), "--device", "cpu"]

        def fid_ours(i: int) -> list[str]:
            return [*iv3, "fid", str(a), str(b), "--weights", weights, "--device", "cpu", "--format", "json",
                    "--no-progress"]

        def fid_theirs(i: int) -> list[str]:
            return [sys.executable, "-c", PYTORCH_FID_CLI, weights, str(a), str(b), "--device", "cpu"]

        pairs = {"features": (features_ours, features_theirs), "fid": (fid_ours, fid_theirs)}
        times = {task: {"inceptionv3": [], "pytorch-fid": []} for task in pairs}
        outputs: dict[str, str] = {}
        for i in range(args.repeats):
            for task, (ours, theirs) in pairs.items():
                order = [("inceptionv3", ours), ("pytorch-fid", theirs)]
                for tool, cmd in order if i % 2 == 0 else order[::-1]:
                    seconds, out = timed(cmd(i), env)
                    times[task][tool].append(seconds)
                    outputs[f"{task} {tool}"] = out
    ours_fid = float(json.loads(outputs["fid inceptionv3"])["fid"])
    theirs_fid = _fid_value(outputs["fid pytorch-fid"], r"FID:\s+([-0-9.eE+naif]+)")
    medians = {task: {tool: statistics.median(t) for tool, t in by_tool.items()}
               for task, by_tool in times.items()}
    return {
        "repeats": args.repeats, "jpegs": args.jpegs, "pngs_per_folder": args.pngs, "size": args.size,
        "weights": "random FID-graph state dict (.pth), loaded by both tools",
        "median_s": medians, "all_s": times,
        "speedup": {task: m["pytorch-fid"] / m["inceptionv3"] for task, m in medians.items()},
        "fid": {"inceptionv3": ours_fid, "pytorch-fid": theirs_fid,
                "rel_diff": abs(ours_fid - theirs_fid) / abs(theirs_fid)},
    }


def environment() -> dict:
    from inceptionv3.bench import harness  # imports torch: only after the timings

    return {"cpu": harness.cpu_info(), "versions": harness.versions(),
            "pytorch_fid": importlib.metadata.version("pytorch-fid")}


def report_startup(r: dict) -> None:
    m = r["median_s"]
    torch_s = m["python -c 'import torch'"]
    print(f"start-up, median of {r['repeats']} fresh processes each:")
    for name, seconds in m.items():
        print(f"  {name:<42}{seconds:8.3f} s  {seconds / torch_s:6.2f} x import torch")
    verdict = "met" if r["help_over_import_torch"] <= HELP_TARGET else "MISSED"
    print(f"  inceptionv3 --help / import torch = {r['help_over_import_torch']:.3f} "
          f"(target <= {HELP_TARGET}: {verdict}); slowest help: {r['slowest_help']} at "
          f"{r['slowest_help_over_import_torch']:.3f}")


def report_whole(r: dict) -> None:
    print(f"whole process, median of {r['repeats']}: {r['jpegs']} JPEGs and {r['pngs_per_folder']} + "
          f"{r['pngs_per_folder']} PNGs of {r['size']} px, {r['weights']}")
    for task, target in (("features", FEATURES_TARGET), ("fid", FID_TARGET)):
        m, speedup = r["median_s"][task], r["speedup"][task]
        theirs = "pytorch-fid --save-stats" if task == "features" else "pytorch-fid A B"
        print(f"  inceptionv3 {task:<9}{m['inceptionv3']:8.2f} s   {theirs:<25}{m['pytorch-fid']:8.2f} s   "
              f"x{speedup:.2f} (target >= {target}: {'met' if speedup >= target else 'MISSED'})")
    f = r["fid"]
    ok = f["rel_diff"] <= FID_REL_TOLERANCE
    print(f"  FID {f['inceptionv3']:.6f} vs {f['pytorch-fid']:.6f}: relative difference {f['rel_diff']:.1e} "
          f"(target <= {FID_REL_TOLERANCE:g}: {'met' if ok else 'MISSED'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Run it on a quiet machine: other load moves every figure.")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each command (default 5)")
    p.add_argument("--whole", action="store_true",
                   help="also time inceptionv3 features / fid against pytorch-fid as whole processes")
    p.add_argument("--jpegs", type=int, default=120, help="--whole: JPEGs for features (default 120)")
    p.add_argument("--pngs", type=int, default=200, help="--whole: PNGs in each fid folder (default 200)")
    p.add_argument("--size", type=int, default=256,
                   help="--whole: side of the generated images (default 256)")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    results: dict = {"startup": startup(args.repeats)}
    report_startup(results["startup"])
    if args.whole:
        results["whole"] = whole(args)
        report_whole(results["whole"])
    results["environment"] = environment()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
