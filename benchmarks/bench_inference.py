"""The inference table of docs/performance.md: `inceptionv3 bench` with the table's settings (the harness
is src/inceptionv3/bench/harness.py). Extra flags are passed on and override these, e.g. --repeats 20.
Usage: python benchmarks/bench_inference.py [inceptionv3 bench flags]
"""
from __future__ import annotations

import sys

from inceptionv3.cli.main import main

TABLE_FLAGS = ["bench", "--batch-size", "16,1", "--repeats", "5", "--latency-repeats", "50",
                "--json", "runs/bench.json"]

if __name__ == "__main__":
    sys.exit(main(TABLE_FLAGS + sys.argv[1:]))
