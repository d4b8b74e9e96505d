"""``inceptionv3 bench``: our engines' speed next to torchvision, ONNX Runtime and OpenVINO, in one run."""
from __future__ import annotations

import argparse

from ..bench import COMPARE
from .common import EXIT_OK, check_output, config_from, csv_of, output_errors

NAME = "bench"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="inference speed next to torchvision, ONNX Runtime and OpenVINO",
                       description="Time our inference engines and the comparisons in one process, in "
                                   "alternation: img/s, ms per batch, p50/p99, GFLOP/s and % of a matmul "
                                   "peak, peak memory, agreement with the plain model, ratios; random weights.")
    p.add_argument("--arch", default="inception_v3", choices=("inception_v3", "inception_mini"))
    p.add_argument("--batch-size", dest="batch_sizes", type=csv_of(int), default=(1, 16),
                   help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--image-size", type=int, default=299, help="square input side (default 299)")
    p.add_argument("--precision", dest="precisions", type=csv_of(str), default=("fp32", "bf16", "int8"),
                   help="comma-separated: fp32, bf16, int8 (default all; pairs a backend lacks are noted)")
    p.add_argument("--backend", dest="backends", type=csv_of(str), default=None,
                   help="comma-separated: torch, onnxruntime, openvino (default: every installed one)")
    p.add_argument("--compare", type=csv_of(str), default=COMPARE,
                   help=f"comma-separated comparisons, or '' for none (default {','.join(COMPARE)}; "
                        "a missing package is skipped with a note)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row (default 10)")
    p.add_argument("--latency-repeats", type=int, default=None,
                   help="timed calls at batch 1, for a p99 that means something (default: --repeats)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per row first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write everything as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_output(args.json, "--json")   # before the run, not after it
    from ..bench.harness import BenchConfig, check_config, format_report, run_bench, write_json
    cfg = config_from(BenchConfig, args)
    check_config(cfg)
    result = run_bench(cfg)
    print(format_report(result))
    if args.json:
        with output_errors(args.json, "--json"):
            print(f"wrote {write_json(result, args.json)}")
    return EXIT_OK
