"""Training speed and memory: our default training step next to a plain PyTorch loop, in one run.

Both train InceptionV3 with the aux head (loss weight 0.4, label smoothing 0.1) at 299 px with RMSProp
(decay 0.9, eps 1.0, the paper's), gradient clipping at 2.0, on the same random batches:

- `torchvision`: `torchvision.models.inception_v3(init_weights=False, aux_logits=True)`, fp32, NCHW, a
  plain zero_grad / forward / backward / clip / step loop;
- `ours`: `inceptionv3.train.train_one_epoch` (the function `inceptionv3 train` runs) over the network
  `prepare_model` gives for the default `TrainConfig` (`--amp auto`, channels_last);
- `ours+ckpt`: the same with `--grad-checkpointing` (lower peak memory, more compute);
- `ours-fp32` (only with --variants): `--amp off --no-channels-last`, our loop in the baseline's arithmetic.

Timing: all variants in one process, their steps interleaved (A B C A B C ...) so that other load on a
shared machine falls on each alike; img/s from the median step after warm-up, and from the fastest step
(the least disturbed). Memory: each variant in its own process, so that its peak resident memory
(ru_maxrss) is its own; reported whole and above the RSS before the first step.
Usage: python benchmarks/bench_train.py [--size 299] [--batch 16] [--steps 5] [--warmup 2] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

VARIANTS = ("torchvision", "ours", "ours+ckpt", "ours-fp32")
NUM_CLASSES = 1000
LR = 0.045 * 16 / 1600   # the paper's lr scaled to the batch; the value does not change the speed


def _rss_mb() -> float:
    from inceptionv3.bench.harness import status_mb

    mb = status_mb("VmRSS")
    return float("nan") if mb is None else mb


def _batches(n: int, batch: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return [(x, y, 0)] * n   # one batch, reused: no data loading in either loop


class TorchvisionStep:
    """The baseline: a plain loop over torchvision's network, fp32, NCHW."""

    def __init__(self) -> None:
        import torchvision

        torch.manual_seed(0)
        self.model = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True,
                                                     num_classes=NUM_CLASSES).train()
        self.opt = torch.optim.RMSprop(self.model.parameters(), lr=LR, alpha=0.9, eps=1.0, weight_decay=4e-5)
        self.settings = {"amp": "off", "channels_last": False, "grad_checkpointing": False}

    def __call__(self, batch) -> None:
        x, y, _ = batch
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        loss = (F.cross_entropy(out.logits, y, label_smoothing=0.1)
                + 0.4 * F.cross_entropy(out.aux_logits, y, label_smoothing=0.1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 2.0)
        self.opt.step()


class OurStep:
    """One step of `train_one_epoch` (what `inceptionv3 train` runs) on the default settings' network."""

    def __init__(self, variant: str, size: int, batch: int) -> None:
        from inceptionv3.models.builder import build_model
        from inceptionv3.training.amp import resolve_amp
        from inceptionv3.training.config import TrainConfig
        from inceptionv3.training.optim import build_optimizer
        from inceptionv3.training.setup import prepare_model

        extra = {"ours+ckpt": {"grad_checkpointing": True},
                 "ours-fp32": {"amp": "off", "channels_last": False}}.get(variant, {})
        self.cfg = TrainConfig(data="digits", arch="inception_v3", image_size=size, batch_size=batch,
                               optimizer="rmsprop", schedule="step", lr=LR, weight_decay=4e-5, clip_grad=2.0,
                               label_smoothing=0.1, aux_weight=0.4, epochs=1, **extra)
        self.device = torch.device("cpu")
        torch.manual_seed(0)
        self.net = prepare_model(build_model("inception_v3", num_classes=NUM_CLASSES, aux_logits=True,
                                             init_weights=False), self.cfg, self.device)
        self.optimizer, self.scheduler = build_optimizer(self.net, self.cfg, steps_per_epoch=1000)
        self.settings = {"amp": resolve_amp(self.cfg.amp, self.device), "channels_last": self.cfg.channels_last,
                         "grad_checkpointing": self.cfg.grad_checkpointing}

    def __call__(self, batch) -> None:
        from inceptionv3.training.loop import train_one_epoch

        train_one_epoch(self.net, [batch], self.optimizer, self.scheduler, self.cfg, self.device,
                        progress=False)


def make_step(variant: str, size: int, batch: int):
    return TorchvisionStep() if variant == "torchvision" else OurStep(variant, size, batch)


def _timed(step, batch) -> float:
    t = time.perf_counter()
    step(batch)
    return time.perf_counter() - t


def timing(variants: list[str], size: int, batch: int, steps: int, warmup: int) -> dict[str, dict]:
    """Every variant in this process, their steps interleaved (A B C A B C ...), so that other load on
    the machine falls on all of them alike."""
    data = _batches(1, batch, size)[0]
    runners = {v: make_step(v, size, batch) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(warmup + steps):
        for v, step in runners.items():
            times[v].append(_timed(step, data))
    return {v: {**runners[v].settings, "step_seconds": t} for v, t in times.items()}


def memory(variant: str, size: int, batch: int, steps: int) -> dict:
    """Peak resident memory of a process that runs only `variant` (ru_maxrss is per process)."""
    data = _batches(1, batch, size)[0]
    step = make_step(variant, size, batch)
    before = _rss_mb()
    for _ in range(steps):
        step(data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
    return {"peak_rss_mb": peak, "peak_above_start_mb": peak - before}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--variants", nargs="+", default=["torchvision", "ours", "ours+ckpt"], choices=VARIANTS)
    p.add_argument("--json", default=None, help="also write the results as JSON")
    p.add_argument("--child", default=None, choices=("timing", "memory"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "timing":
        print(json.dumps(timing(args.variants, args.size, args.batch, args.steps, args.warmup)))
        return
    if args.child == "memory":
        print(json.dumps(memory(args.variants[0], args.size, args.batch, steps=2)))
        return

    common = ["--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
              "--warmup", str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
    timed = _child(["--child", "timing", "--variants", *args.variants, *common])
    results = []
    for variant in args.variants:
        r = {"variant": variant, **timed[variant]}
        step = statistics.median(r["step_seconds"][args.warmup:])
        fastest = min(r["step_seconds"][args.warmup:])
        r.update(ms_per_step=1000 * step, img_per_s=args.batch / step, best_img_per_s=args.batch / fastest)
        r.update(_child(["--child", "memory", "--variants", variant, *common]))
        results.append(r)
    base = next((r for r in results if r["variant"] == "torchvision"), results[0])
    print(f"training step, InceptionV3 + aux head, {args.size} px, batch {args.batch}, RMSProp; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or 'cpu'}")
    print(f"{'variant':<13}{'amp':<6}{'NHWC':<6}{'ckpt':<6}{'ms/step':>9}{'img/s':>8}{'x base':>8}"
          f"{'best':>7}{'x base':>8}{'peak MB':>9}{'+MB':>8}")
    for r in results:
        r["speedup_vs_torchvision"] = r["img_per_s"] / base["img_per_s"]
        r["best_speedup_vs_torchvision"] = r["best_img_per_s"] / base["best_img_per_s"]
        print(f"{r['variant']:<13}{r['amp']:<6}{'yes' if r['channels_last'] else 'no':<6}"
              f"{'yes' if r['grad_checkpointing'] else 'no':<6}{r['ms_per_step']:>9.0f}"
              f"{r['img_per_s']:>8.2f}{r['speedup_vs_torchvision']:>7.2f}x{r['best_img_per_s']:>7.2f}"
              f"{r['best_speedup_vs_torchvision']:>7.2f}x{r['peak_rss_mb']:>9.0f}{r['peak_above_start_mb']:>8.0f}")
    if args.json:
        from inceptionv3.runtime.files import write_text_atomic

        meta = {"size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                "threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
                "cpu": platform.processor(), "cores": os.cpu_count()}
        write_text_atomic(args.json, json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
