"""The exported graph with each 3x3 average pool moved after its branch's 1x1 conv, against the plain
BN-folded graph, timed in pairs on every installed runtime and precision (random weights, 299 px).

Each round calls both graphs once, in alternating order, so a neighbour on the cores slows both alike;
the figure is the median of the per-round ratios plain time / moved time (> 1: moving the pools is
faster). int8 quantizes both graphs with the same 32 random calibration images; speed only, since
agreement needs a trained model (benchmarks/agreement_digits.py).
Usage: python benchmarks/bench_moved_pools.py [--rounds 20] [--batch-size 16,1] [--runs openvino:bf16,...]
       [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from inceptionv3.bench import harness
from inceptionv3.engine.backends import openvino_session as _openvino_session
from inceptionv3.engine.backends import ort_session as _ort_session
from inceptionv3.engine.backends import quantize_int8 as _quantize_int8
from inceptionv3.engine.engine import Head
from inceptionv3.engine.fuse import fuse_for_inference
from inceptionv3.engine.onnx import export_onnx
from inceptionv3.models.inception import inception_v3
from inceptionv3.runtime.files import write_text_atomic

RUNS = [("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"), ("onnxruntime", "fp32"),
        ("onnxruntime", "int8")]


def paired(a, b, x: np.ndarray, rounds: int) -> dict:
    for _ in range(2):
        a(x), b(x)
    ta, tb, ratios = [], [], []
    for i in range(rounds):
        order = (a, b) if i % 2 == 0 else (b, a)
        t = {}
        for fn in order:
            start = time.perf_counter()
            fn(x)
            t[fn] = time.perf_counter() - start
        ta.append(t[a])
        tb.append(t[b])
        ratios.append(t[a] / t[b])
    return {"plain_img_per_s": len(x) / statistics.median(ta), "moved_img_per_s": len(x) / statistics.median(tb),
            "ratio": statistics.median(ratios)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20, help="paired rounds at batch 16 (3x at batch 1)")
    p.add_argument("--batch-size", default="16,1")
    p.add_argument("--runs", default=",".join(f"{b}:{q}" for b, q in RUNS),
                   help="backend:precision pairs (default: all five)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net = inception_v3(aux_logits=False, init_weights=False)
    harness.random_state(net, 0)
    net.eval()
    graphs = {"plain": fuse_for_inference(net, siblings=False, pool_after_conv=False),
              "moved": fuse_for_inference(net, siblings=False, pool_after_conv=True)}
    x = torch.randn(16, 3, 299, 299)
    calibration = torch.randn(32, 3, 299, 299, generator=torch.Generator().manual_seed(1))
    results = []
    with tempfile.TemporaryDirectory(prefix="moved_pools_") as tmp:
        files = {}
        for name, g in graphs.items():
            files[name, "fp32"] = Path(tmp) / f"{name}.onnx"
            export_onnx(Head(g, "logits").eval(), torch.randn(2, 3, 299, 299), files[name, "fp32"])
        print(f"{torch.get_num_threads()} threads, 299 px; ratio = plain time / moved time, median of rounds")
        for backend, precision in (r.split(":") for r in args.runs.split(",")):
            if not harness.have(backend):
                print(f"  {backend}: not installed, skipped")
                continue
            graph = "int8" if precision == "int8" else "fp32"     # bf16 is OpenVINO's hint on the fp32 file
            for name in graphs:
                if (name, graph) not in files:
                    files[name, graph] = Path(tmp) / f"{name}.int8.onnx"
                    _quantize_int8(files[name, "fp32"], files[name, graph], calibration)
            def make(f: Path, backend=backend, precision=precision):
                return _ort_session(f) if backend == "onnxruntime" else _openvino_session(f, precision)
            plain, moved = make(files["plain", graph]), make(files["moved", graph])
            for batch in map(int, args.batch_size.split(",")):
                xb = np.ascontiguousarray(x[:batch].numpy())
                r = paired(plain, moved, xb, args.rounds if batch > 1 else 3 * args.rounds)
                results.append({"backend": backend, "precision": precision, "batch": batch, **r})
                print(f"  {backend:<12}{precision:<6} batch {batch:>2}: plain {r['plain_img_per_s']:7.1f} img/s, "
                      f"moved {r['moved_img_per_s']:7.1f} img/s, paired ratio x{r['ratio']:.3f}")
    if args.json:
        write_text_atomic(args.json, json.dumps({"load_average": harness._load(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
