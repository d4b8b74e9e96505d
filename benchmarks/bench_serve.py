"""Serving throughput and latency: ``inceptionv3 serve`` against a plain FastAPI server that runs torchvision's
``inception_v3`` eagerly per request (as tutorials do) and against LitServe batching the same torchvision
model, all on 127.0.0.1, at one precision (``--precision fp32``, the default, or ``bf16``: ours runs
``--precision bf16``, the two others their model under ``torch.autocast`` bf16), the same random weights,
in one run. Ours runs as a user starts it (``--backend auto`` unless ``--backend`` says otherwise).

Each server runs alone in its own process (started, measured at every concurrency, stopped) while this
process is the load generator: ``--concurrency`` clients (asyncio + aiohttp, one connection each) send
JPEGs (distinct 500 x 375 images) back to back; the first requests of each level (8, or one per client
where there are more) warm up and are not counted. Per level: requests/s over the timed ones, p50 and p99
latency, and the CPU this process used (the load generator shares the cores with the server: its
cores-busy figure says how much of the machine it took). Levels stop after ``--max-seconds`` even if not all requests ran.

Request bodies: ours and the plain server take the JPEG bytes as the body; LitServe takes JSON with the
image in base64, as its image examples do (its request decoding is JSON or form data).

Every process gets the OpenMP spin setting ``inceptionv3`` makes for itself (``GOMP_SPINCOUNT``: this process
makes it with ``runtime.threads.prepare_process`` and every server inherits it; a wait policy or spin count
the user exported wins for all of them), so that on a shared machine the peers are not slowed by spinning
threads that ours avoids. Our server's other start-up setting, keeping freed memory in malloc's heap for the
next batch (``runtime.threads.keep_freed_memory``, made by ``inceptionv3 serve`` as an inference command), is
not given to the peers, the plain FastAPI server and LitServe, nor to this process, where the reference is
timed: it is part of how our server runs, not a setting of the machine, and as a ``mallopt`` call inside the
process nothing inherits it.

The reference for concurrency 1: the engine the server runs (``serve.service.serving_engine``: the same
backend and precision, as ``predict`` runs it for a large job) on one preprocessed image (median of
repeats), plus decoding and preprocessing one of the JPEGs, timed in this process before any server starts.
The same engine's images/s on full batches (32) is printed beside it, with two bounds that are not targets:
that rate over the plain server's at the highest concurrency (what the first target's ratio could be at most
in this run, for a server that cost nothing beyond its engine), and ours over that rate (the share of its
own engine our server delivers).

Targets at concurrency 32: ours >= 3x the plain server's requests/s and >= 1.3x LitServe's, with p99 no
worse than LitServe's; at concurrency 1, our p50 within 15% of the reference.

``--soak SECONDS`` instead keeps our server busy at concurrency 8 for that long and reports its resident
set after the warm-up and at the end (memory should stay flat).

Usage: python benchmarks/bench_serve.py [--requests 16,48,128] [--concurrency 1,8,32] [--max-seconds 60]
       [--precision fp32|bf16] [--backend auto] [--json FILE] | --soak 120
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import litserve as ls
import numpy as np
from fastapi import FastAPI, Request

from inceptionv3.bench.harness import status_mb
from inceptionv3.runtime.threads import prepare_process

STD = (0.5, 0.5, 0.5)   # the ImageNet preset of torchvision's inception_v3: mean = std = 0.5
THROUGHPUT_VS_PLAIN, THROUGHPUT_VS_LITSERVE, C1_OVERHEAD = 3.0, 1.3, 1.15
MAX_BATCH = 32          # our server's --max-batch here, and LitServe's max_batch_size
WARMUP_REQUESTS = 8     # untimed requests per level (at least one per client): first decodes and hops


# -- the two reference servers (run as `bench_serve.py --serve KIND PORT WEIGHTS`) -------------------------

def torchvision_model(weights: str):
    """torchvision's inception_v3 with the benchmark's random weights, eval mode."""
    import torch
    from safetensors.torch import load_file
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=False, init_weights=False)
    model.load_state_dict(load_file(weights), strict=True)
    torch.set_grad_enabled(False)
    return model.eval()


def torchvision_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(342), transforms.CenterCrop(299), transforms.ToTensor(),
                               transforms.Normalize(STD, STD)])


def autocast(precision: str):
    """The peers' precision: torch.autocast bf16 on the CPU, or nothing for fp32."""
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def top5(logits) -> list[dict]:
    probs, idx = logits.float().softmax(dim=-1).topk(5)
    return [{"index": int(i), "probability": float(p)} for p, i in zip(probs, idx)]


def serve_plain(port: int, weights: str, precision: str) -> None:
    """The tutorial server: decode, preprocess and run the model inline, one request at a time."""
    import uvicorn
    from PIL import Image

    model, transform, app = torchvision_model(weights), torchvision_transform(), FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> list[dict]:
        image = Image.open(io.BytesIO(await request.body())).convert("RGB")
        with autocast(precision):
            return top5(model(transform(image).unsqueeze(0))[0])

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class LitInception(ls.LitAPI):
    """LitServe's API over the same model; at module level, since LitServe pickles it into its worker."""

    def __init__(self, weights: str, precision: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weights, self.precision = weights, precision

    def setup(self, device):
        self.model, self.transform = torchvision_model(self.weights), torchvision_transform()

    def decode_request(self, request):
        from PIL import Image

        return self.transform(Image.open(io.BytesIO(base64.b64decode(request["image"]))).convert("RGB"))

    def batch(self, inputs):
        import torch

        return torch.stack(inputs)

    def predict(self, x):
        with autocast(self.precision):
            return self.model(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return top5(output)


def serve_litserve(port: int, weights: str, precision: str) -> None:
    """LitServe with its batching (up to 32 requests, 5 ms batch timeout) over the same model."""
    server = ls.LitServer(LitInception(weights, precision, max_batch_size=MAX_BATCH, batch_timeout=0.005),
                          accelerator="cpu",
                          workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, num_api_servers=1)


# -- the load generator ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(folder: Path, n: int = 8) -> tuple[Path, list[bytes]]:
    """Random weights (saved once, read by all three servers) and ``n`` distinct JPEGs."""
    import torch
    from PIL import Image
    from torchvision.models import inception_v3

    from inceptionv3 import build_model
    from inceptionv3.weights.io import save_model
    from inceptionv3.weights.preprocess import Preprocess

    torch.manual_seed(0)
    reference = inception_v3(weights=None, aux_logits=False, init_weights=True).eval()
    ours = build_model("inception_v3", num_classes=1000, aux_logits=False)
    ours.load_state_dict(reference.state_dict(), strict=True)
    weights = folder / "random.safetensors"
    save_model(ours, weights, preprocess=Preprocess())
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(n):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)   # smooth content, photo-like file sizes
        img = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    return weights, jpegs


def reference_latency(weights: Path, jpeg: bytes, precision: str, backend: str, batch: int,
                      repeats: int = 10) -> dict:
    """The server's engine on one image (median) and decoding + preprocessing one JPEG (median), seconds;
    and the engine's images/s on batches of ``batch`` (median of 3): the most any server running it reaches,
    before HTTP and decoding."""
    import torch

    from inceptionv3.data.decode import load_image
    from inceptionv3.engine.inputs import model_transform
    from inceptionv3.engine.options import EngineOptions
    from inceptionv3.serve.service import serving_engine
    from inceptionv3.weights.load import load_model

    model = load_model(weights)
    engine = serving_engine(model, "logits", EngineOptions(precision=precision, backend=backend))
    transform = model_transform(model)
    x = transform(load_image("bench.jpg", data=jpeg)).unsqueeze(0)
    for _ in range(3):
        engine(x)
    model_s, decode_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        engine(x)
        model_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        transform(load_image("bench.jpg", data=jpeg))
        decode_s.append(time.perf_counter() - t)
    xs = x.expand(batch, -1, -1, -1).contiguous()
    engine(xs)
    batch_s = []
    for _ in range(3):
        t = time.perf_counter()
        engine(xs)
        batch_s.append(time.perf_counter() - t)
    described = engine.describe()
    del engine, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"model_s": statistics.median(model_s), "decode_s": statistics.median(decode_s), "engine": described,
            "batch": batch, "batch_img_per_s": batch / statistics.median(batch_s)}


async def load(url: str, bodies: list[tuple[bytes, dict]], concurrency: int, requests: int, warmup: int,
               max_seconds: float) -> dict:
    """``requests`` timed requests (after ``warmup``) from ``concurrency`` clients sending back to back.

    aiohttp, whose HTTP parsing is compiled: the load generator shares the cores with the server, and a
    pure-Python client took several times its CPU per request (and added to each latency) away from what
    is measured."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    counter = iter(range(10**9))

    async def client(session: aiohttp.ClientSession, stop_at: float, sink: list[float] | None, todo: int) -> None:
        nonlocal failures
        while True:
            i = next(counter)
            if i >= todo or time.perf_counter() > stop_at:
                return
            body, headers = bodies[i % len(bodies)]
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            if not ok:
                failures += 1
            elif sink is not None:
                sink.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=concurrency)     # one kept-alive connection per client
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(*(client(session, time.perf_counter() + max_seconds, None, warmup)
                               for _ in range(concurrency)))
        counter = iter(range(10**9))
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(session, t0 + max_seconds, latencies, requests) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    q = np.quantile(latencies, [0.5, 0.99]) if latencies else [float("nan")] * 2
    return {"concurrency": concurrency, "requests": len(latencies), "failures": failures,
            "req_per_s": len(latencies) / wall, "p50_ms": 1000 * q[0], "p99_ms": 1000 * q[1],
            "loadgen_cpu_s": cpu, "loadgen_cores": cpu / wall}


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    sys.exit(f"no answer from {url} within {seconds} s")


def rss_mb(pid: int) -> float:
    """Resident set of a process, MB (Linux /proc)."""
    mb = status_mb("VmRSS", pid)
    return float("nan") if mb is None else mb


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _group_gone(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait up to ``seconds`` for every process of ``proc``'s group to end (reaping ``proc`` itself)."""
    deadline = time.monotonic() + seconds
    while _group_running(proc.pid):
        proc.poll()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop(proc: subprocess.Popen, seconds: float = 60) -> None:
    """Stop a server and every process it started. LitServe runs its model in worker processes that outlive
    their parent's SIGTERM and would keep taking CPU from whatever is measured next, so each server runs in
    a session of its own and its whole process group gets the signal: SIGTERM, then SIGKILL for what is
    left after ``seconds``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(proc, seconds):
            break
    proc.wait()


def soak(weights: Path, jpegs: list[bytes], seconds: float, concurrency: int = 8) -> dict:
    """Our server under steady load for ``seconds``: its resident set after the warm-up and at the end."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "inceptionv3", "serve", "--weights", str(weights), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1/predict"
    bodies = [(j, {"content-type": "image/jpeg"}) for j in jpegs]
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc)
        asyncio.run(load(url, bodies, concurrency, 2 * concurrency, warmup=concurrency, max_seconds=seconds))
        start = rss_mb(proc.pid)
        samples = [start]
        t0 = time.monotonic()
        done = 0
        while time.monotonic() - t0 < seconds:
            row = asyncio.run(load(url, bodies, concurrency, 10**9, warmup=0,
                                   max_seconds=min(20.0, seconds - (time.monotonic() - t0))))
            done += row["requests"]
            samples.append(rss_mb(proc.pid))
        result = {"seconds": seconds, "requests": done, "rss_start_mb": start, "rss_end_mb": samples[-1],
                  "rss_max_mb": max(samples), "rss_samples_mb": [round(x, 1) for x in samples]}
        print(f"soak: {done} requests in {seconds:.0f} s at concurrency {concurrency}; resident set "
              f"{start:.0f} MB after warm-up, {samples[-1]:.0f} MB at the end (max {max(samples):.0f} MB); "
              f"every 20 s: {', '.join(f'{x:.0f}' for x in samples)}",
              flush=True)
        return result
    finally:
        stop(proc)


def run_server(kind: str, weights: Path, jpegs: list[bytes], levels: list[tuple[int, int]],
               max_seconds: float, precision: str, backend: str) -> list[dict]:
    port = free_port()
    if kind == "inceptionv3":
        cmd = [sys.executable, "-m", "inceptionv3", "serve", "--weights", str(weights), "--port", str(port),
               "--max-batch", str(MAX_BATCH), "--max-delay-ms", "5", "--precision", precision, "--backend", backend]
        url, probe = f"http://127.0.0.1:{port}/v1/predict", f"http://127.0.0.1:{port}/v2/health/ready"
    else:
        cmd = [sys.executable, __file__, "--serve", kind, str(port), str(weights), precision]
        url, probe = f"http://127.0.0.1:{port}/predict", f"http://127.0.0.1:{port}/health"
    if kind == "litserve":
        bodies = [(json.dumps({"image": base64.b64encode(j).decode()}).encode(),
                   {"content-type": "application/json"}) for j in jpegs]
    else:
        bodies = [(j, {"content-type": "image/jpeg"}) for j in jpegs]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_ready(probe, proc)
        if kind == "inceptionv3":
            import httpx

            print(f"  inceptionv3 engine: {httpx.get(url.replace('/predict', '/model')).json()['engine']}",
                  flush=True)
        rows = []
        for concurrency, requests in levels:
            row = asyncio.run(load(url, bodies, concurrency, requests, warmup=max(WARMUP_REQUESTS, concurrency),
                                   max_seconds=max_seconds))
            row["server"] = kind
            rows.append(row)
            print(f"  {kind:12s} c={concurrency:<3d} {row['req_per_s']:7.2f} req/s  p50 {row['p50_ms']:8.1f} ms  "
                  f"p99 {row['p99_ms']:8.1f} ms  ({row['requests']} requests, {row['failures']} failed; "
                  f"load generator {row['loadgen_cores']:.2f} cores)", flush=True)
        return rows
    finally:
        stop(proc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", nargs=4, metavar=("KIND", "PORT", "WEIGHTS", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="every server's precision (the peers: torch.autocast bf16)")
    p.add_argument("--backend", default="auto", help="our server's --backend")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", default="16,48,128", help="timed requests per concurrency level")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time bound per level")
    p.add_argument("--servers", default="inceptionv3,plain,litserve")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="only a memory soak of our server at concurrency 8 for SECONDS")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    # The OpenMP setting our command makes before torch loads (runtime.threads.prepare_process), here for
    # this process and, inherited, for every server: the comparison is of the servers, not of spin-waits.
    prepare_process()
    if args.serve:
        kind, port, weights, precision = args.serve
        (serve_plain if kind == "plain" else serve_litserve)(int(port), weights, precision)
        return
    if args.soak:
        with tempfile.TemporaryDirectory() as tmp:
            weights, jpegs = make_inputs(Path(tmp))
            result = soak(weights, jpegs, args.soak)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
    levels = list(zip(map(int, args.concurrency.split(",")), map(int, args.requests.split(","))))
    with tempfile.TemporaryDirectory() as tmp:
        weights, jpegs = make_inputs(Path(tmp))
        top = max(c for c, _ in levels)
        ref = reference_latency(weights, jpegs[0], args.precision, args.backend, batch=min(top, MAX_BATCH))
        print(f"reference: the server's engine ({ref['engine']}) on one image {1000 * ref['model_s']:.1f} ms "
              f"+ decoding {1000 * ref['decode_s']:.1f} ms; at batch {ref['batch']} "
              f"{ref['batch_img_per_s']:.1f} img/s; {os.cpu_count()} cores; {args.precision}", flush=True)
        rows = []
        for kind in args.servers.split(","):
            rows += run_server(kind, weights, jpegs, levels, args.max_seconds, args.precision, args.backend)
    by = {(r["server"], r["concurrency"]): r for r in rows}
    checks = {}
    if ("inceptionv3", top) in by and ("plain", top) in by:
        checks[f"c={top} vs plain (>= {THROUGHPUT_VS_PLAIN}x)"] = \
            by["inceptionv3", top]["req_per_s"] / by["plain", top]["req_per_s"]
    if ("inceptionv3", top) in by and ("litserve", top) in by:
        checks[f"c={top} vs LitServe (>= {THROUGHPUT_VS_LITSERVE}x)"] = \
            by["inceptionv3", top]["req_per_s"] / by["litserve", top]["req_per_s"]
        checks[f"c={top} p99 LitServe / ours (>= 1)"] = by["litserve", top]["p99_ms"] / by["inceptionv3", top]["p99_ms"]
    if ("inceptionv3", 1) in by:
        checks[f"c=1 p50 / reference (<= {C1_OVERHEAD})"] = \
            by["inceptionv3", 1]["p50_ms"] / (1000 * (ref["model_s"] + ref["decode_s"]))
    print("\n| server | concurrency | req/s | p50 ms | p99 ms | requests | load generator cores |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['server']} | {r['concurrency']} | {r['req_per_s']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['requests']} | {r['loadgen_cores']:.2f} |")
    print()
    for name, value in checks.items():
        print(f"{name}: {value:.2f}")
    bounds = {}
    if ("plain", top) in by:
        # Not a target: what the first check could be at most in this run, with a server costing nothing.
        bounds[f"c={top} engine alone / plain"] = ref["batch_img_per_s"] / by["plain", top]["req_per_s"]
    if ("inceptionv3", top) in by:
        bounds[f"c={top} ours / engine alone"] = by["inceptionv3", top]["req_per_s"] / ref["batch_img_per_s"]
    for name, value in bounds.items():
        print(f"{name}: {value:.2f}")
    if args.json:
        import platform

        import torch
        Path(args.json).write_text(json.dumps({"rows": rows, "reference": ref, "checks": checks, "bounds": bounds,
                                               "precision": args.precision, "backend": args.backend,
                                               "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                               "machine": platform.processor() or platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
