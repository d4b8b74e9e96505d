"""Inference speed of our InceptionV3 next to torchvision's, measured in one run on this machine.

Reports img/s and ms/batch (median of repeats after warm-up) for each runtime and the ratio to
torchvision eager; both networks share one random state dict, and their logits are compared first.
Usage: python benchmarks/bench_inference.py [--size 299] [--batch 16 1] [--repeats 5] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torchvision

from inceptionv3 import inception_v3
from inceptionv3.inference import inference_copy


def time_model(fn, x: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--batch", type=int, nargs="+", default=[16, 1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                         transform_input=False).eval()
    with torch.no_grad():   # non-trivial BN statistics and head, so the logit comparison means something
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        tv.fc.weight.normal_(0, 0.01)
    ours = inception_v3(aux_logits=False).eval()
    ours.load_state_dict(tv.state_dict())
    ours_cl = inception_v3(aux_logits=False).eval().to(memory_format=torch.channels_last)
    ours_cl.load_state_dict(tv.state_dict())

    fast = inference_copy(ours, torch.device("cpu"))   # what predict/features run: BN folded, channels-last

    x = torch.randn(2, 3, args.size, args.size)
    with torch.inference_mode():
        diff = (ours(x) - tv(x)).abs().max().item()
        fast_diff = (fast(x.contiguous(memory_format=torch.channels_last)) - tv(x)).abs().max().item()
    runtimes = {
        "torchvision eager fp32": lambda b: tv(b),
        "inceptionv3 eager fp32": lambda b: ours(b),
        "inceptionv3 channels_last fp32": lambda b: ours_cl(b.contiguous(memory_format=torch.channels_last)),
        "inceptionv3 predict path (BN folded, CL)": lambda b: fast(b.contiguous(memory_format=torch.channels_last)),
    }
    results = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "torchvision": torchvision.__version__, "size": args.size,
               "max_abs_logit_diff_vs_torchvision": diff,
               "max_abs_logit_diff_fast_path": fast_diff, "runs": []}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px; "
          f"max |logit diff| vs torchvision: {diff:.2e} (plain), {fast_diff:.2e} (predict path)")
    for batch in args.batch:
        xb = torch.randn(batch, 3, args.size, args.size)
        base = None
        for name, fn in runtimes.items():
            sec = time_model(fn, xb, args.repeats)
            base = base or sec
            row = {"runtime": name, "batch": batch, "img_per_s": batch / sec, "ms_per_batch": 1000 * sec,
                   "x_torchvision_eager": base / sec}
            results["runs"].append(row)
            print(f"batch {batch:>3}  {name:<42} {row['img_per_s']:7.1f} img/s {row['ms_per_batch']:9.1f} ms"
                  f"   x{row['x_torchvision_eager']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
