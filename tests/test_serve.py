"""``inceptionv3 serve`` over real HTTP on 127.0.0.1: the REST endpoints against ``predict`` on the same files,
the limits (413, 422, 401, 400, 503), disconnecting clients, a burst of 200 requests, the metrics, the
reference page, nothing written to disk, and the command itself (address printed, SIGTERM drains)."""
from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_fixtures import CLASSES, make_images, make_weights, running_server, wait_ready

from inceptionv3.bench.harness import status_mb
from inceptionv3.cli.main import main
from inceptionv3.serve.config import ServeConfig
from inceptionv3.tasks.predict import predict

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    weights = make_weights(root / "model.safetensors")
    images = make_images(root / "images")
    expected = {Path(r["path"]).name: r["predictions"]
                for r in predict(images, weights=weights, top_k=3, workers=0)}
    return {"weights": weights, "images": images, "expected": expected, "root": root}


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    # Every temporary file Python's tempfile makes in the server goes here: it must stay empty.
    spool = tmp_path_factory.mktemp("spool")
    saved = tempfile.tempdir
    tempfile.tempdir = str(spool)
    # The torch backend: no export to wait for (test_backend_auto_serves_on_openvino covers the default).
    config = ServeConfig(weights=str(files["weights"]), port=0, token=TOKEN, max_batch=32, max_delay_ms=2,
                         max_queue=256, max_upload_mb=1, top_k=3, backend="torch")
    try:
        with running_server(config) as running:
            running.spool = spool
            yield running
    finally:
        tempfile.tempdir = saved


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def _close(a: list[dict], b: list[dict]) -> bool:
    return ([p["index"] for p in a] == [p["index"] for p in b] and [p["label"] for p in a] == [p["label"] for p in b]
            and np.allclose([p["probability"] for p in a], [p["probability"] for p in b], atol=1e-5))


def test_predict_raw_and_multipart_match_the_predict_command(client, files):
    first = files["images"][0]
    r = client.post("/v1/predict", content=first.read_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    [one] = r.json()
    assert one["path"] == "body" and _close(one["predictions"], files["expected"][first.name])
    r = client.post("/v1/predict?top_k=2",
                    files=[("file", (p.name, p.read_bytes())) for p in files["images"][:3]])
    assert r.status_code == 200, r.text
    got = r.json()
    assert [g["path"] for g in got] == [p.name for p in files["images"][:3]]
    for g in got:
        assert len(g["predictions"]) == 2 and _close(g["predictions"], files["expected"][g["path"]][:2])
    assert {p["label"] for g in got for p in g["predictions"]} <= set(CLASSES)


def test_features_and_explain(client, files):
    data = files["images"][1].read_bytes()
    r = client.post("/v1/features", content=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == "pool" and body["dim"] == 2048 and len(body["results"][0]["features"]) == 2048
    r = client.post("/v1/features?layer=Mixed_6e", files=[("file", ("a.jpg", data)), ("file", ("b.jpg", data))])
    assert r.status_code == 200 and r.json()["dim"] == 768
    a, b = (row["features"] for row in r.json()["results"])
    assert np.allclose(a, b, atol=1e-5)
    r = client.post("/v1/features?layer=nope", content=data)
    assert r.status_code == 400 and "unknown layer 'nope'" in r.json()["detail"]

    r = client.post("/v1/explain?target=fish&layer=Mixed_6e", content=data)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-target"] == "2"
    assert Image.open(io.BytesIO(r.content)).size == (75, 75)
    r = client.post("/v1/explain?format=json&layer=Mixed_6e", content=data)
    assert r.status_code == 200, r.text
    [m] = r.json()
    heat = np.asarray(m["map"])
    assert heat.shape == (75, 75) and 0 <= heat.min() and heat.max() <= 1
    assert m["target"] == files["expected"][files["images"][1].name][0]["index"]
    r = client.post("/v1/explain?target=whale", content=data)
    assert r.status_code == 400 and "whale" in r.json()["detail"]


def _raw(port: int, request: bytes, read: bool = True, timeout: float = 30) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        if not read:
            return b""
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_oversized_uploads_are_refused_before_the_body_is_read(server, client):
    # A body announced larger than the limit: the answer comes without a byte of it being sent.
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: image/png\r\nContent-Length: {10**9}\r\nConnection: close\r\n\r\n").encode()
    reply = _raw(server.port, head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"upload limit of 1 MB" in reply
    # No length given (chunked): counted while it streams, refused past the limit.
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536
    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


def test_bad_images_get_422_with_the_reason(client, files, monkeypatch):
    r = client.post("/v1/predict", content=b"this is not an image", headers={"content-type": "image/png"})
    assert r.status_code == 422 and r.json()["detail"] == "body: not an image PIL can read"
    whole = files["images"][0].read_bytes()
    r = client.post("/v1/predict", files=[("file", ("good.png", whole)), ("file", ("cut.png", whole[:300]))])
    assert r.status_code == 422 and "cut.png: truncated or corrupt image data" in r.json()["detail"]
    assert "good.png" not in r.json()["detail"]
    # A decompression bomb: more pixels than PIL's limit (lowered here, the server runs in this process).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)
    r = client.post("/v1/predict", content=whole)
    assert r.status_code == 422 and "decompression-bomb limit" in r.json()["detail"]


def test_token_is_required_and_checked(server, files):
    data = files["images"][0].read_bytes()
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = anon.post("/v1/predict", content=data, headers=headers)
            assert r.status_code == 401 and "token" in r.json()["detail"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert anon.get("/metrics").status_code == 401
        assert anon.get("/v2/models/model").status_code == 401
        # The page, the reference and the probes stay open.
        for path in ("/", "/docs", "/openapi.json", "/static/app.js", "/v2/health/live", "/v2/health/ready"):
            assert anon.get(path).status_code == 200, path


def test_malformed_requests_get_400(client):
    r = client.post("/v1/predict", json={"image": "x"})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = client.post("/v1/predict", content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "empty request body" in r.json()["detail"]
    r = client.post("/v1/predict", data={"note": "no file"}, files=[])
    assert r.status_code == 400
    r = client.post("/v1/predict", files={"note": (None, "text only")})
    assert r.status_code == 400 and "no files" in r.json()["detail"]
    r = client.post("/v1/predict?top_k=0", content=b"x")
    assert r.status_code == 400 and "top_k" in r.json()["detail"]


def _block_engine(server) -> threading.Event:
    """Occupy the engine's one thread until the event is set (so requests queue up behind it)."""
    release = threading.Event()
    server.service.compute.submit(release.wait, 30)
    return release


def test_full_queue_answers_503_with_retry_after(server, client, files):
    batcher = server.service.batchers["logits"]
    data = files["images"][0].read_bytes()
    release = _block_engine(server)
    old = batcher.max_queue, batcher.max_batch
    # One image per batch: the first runs (into the blocked engine), the second waits, the rest find no room.
    batcher.max_queue, batcher.max_batch = 1, 1
    try:
        async def burst():
            async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as ac:
                tasks = [asyncio.create_task(ac.post("/v1/predict", content=data)) for _ in range(4)]
                await asyncio.sleep(1.0)
                release.set()
                return await asyncio.gather(*tasks)
        replies = asyncio.run(burst())
    finally:
        batcher.max_queue, batcher.max_batch = old
        release.set()
    codes = sorted(r.status_code for r in replies)
    assert 503 in codes and 200 in codes, codes
    busy = next(r for r in replies if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1 and "queue is full" in busy.json()["detail"]


def test_clients_that_leave_do_not_stall_the_batcher(server, client, files):
    data = files["images"][2].read_bytes()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    # Mid-upload: half the body, then gone.
    _raw(server.port, head + data[: len(data) // 2], read=False)
    # Mid-batch: the whole request, then gone while the engine is busy and its image waits.
    release = _block_engine(server)
    _raw(server.port, head + data, read=False)
    time.sleep(0.5)
    release.set()
    t0 = time.monotonic()
    r = client.post("/v1/predict", content=data)
    assert r.status_code == 200 and _close(r.json()[0]["predictions"], files["expected"][files["images"][2].name])
    assert time.monotonic() - t0 < 20
    assert server.service.batchers["logits"].waiting == 0


def test_a_burst_of_200_requests_is_answered_fully_and_correctly(server, files):
    images = files["images"]
    blobs = [p.read_bytes() for p in images]

    async def burst():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120, limits=limits) as ac:
            return await asyncio.gather(*(ac.post("/v1/predict", files={"file": (images[i % len(images)].name,
                                                                                  blobs[i % len(images)])})
                                          for i in range(200)))
    replies = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * 200
    for i, r in enumerate(replies):
        [got] = r.json()
        name = images[i % len(images)].name
        assert got["path"] == name and _close(got["predictions"], files["expected"][name]), i


def test_batches_run_as_power_of_two_pieces_in_order():
    import torch

    from inceptionv3.serve.batcher import Batcher, chunks
    from inceptionv3.serve.metrics import ServerMetrics

    assert chunks(13) == [(0, 8), (8, 4), (12, 1)] and chunks(32) == [(0, 32)] and chunks(0) == []
    sizes = []

    def run(x):
        sizes.append(len(x))
        return x[:, :1, 0, 0] * 2

    async def go():
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("logits", run, pool, ServerMetrics(), max_batch=16, max_delay=0.05)
            out = await b.submit(torch.arange(13.0).view(13, 1, 1, 1).expand(13, 3, 2, 2))
            await b.stop()
            return out
    out = asyncio.run(go())
    assert sizes == [8, 4, 1] and out.flatten().tolist() == [2.0 * i for i in range(13)]


def test_a_lone_image_reaches_the_engine_without_a_copy():
    import torch

    from inceptionv3.serve.batcher import Batcher, stack
    from inceptionv3.serve.metrics import ServerMetrics

    seen = []

    def run(x):
        seen.append(x.data_ptr())
        return x[:, :1, 0, 0]

    async def go(image):
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("logits", run, pool, ServerMetrics(), max_batch=16, max_delay=0)
            out = await b.submit(image)
            await b.stop()
            return out
    image = torch.rand(3, 2, 2)
    decoded = stack([image])            # what the service hands the batcher for a one-image request
    assert decoded.shape == (1, 3, 2, 2) and decoded.data_ptr() == image.data_ptr()
    assert asyncio.run(go(decoded)).flatten().tolist() == [image[0, 0, 0].item()]
    assert seen == [image.data_ptr()]
    assert stack([image, image]).shape == (2, 3, 2, 2)


def test_a_lone_request_does_not_wait_for_company_but_a_busy_queue_does():
    import torch

    from inceptionv3.serve.batcher import Batcher
    from inceptionv3.serve.metrics import ServerMetrics

    sizes = []

    def run(x):
        sizes.append(len(x))
        return x[:, :1, 0, 0]

    async def go():
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("logits", run, pool, ServerMetrics(), max_batch=16, max_delay=60)
            image = torch.zeros(1, 3, 2, 2)
            # Alone: it runs at once, not after the minute of max_delay.
            await asyncio.wait_for(b.submit(image), 10)
            await asyncio.wait_for(b.submit(image), 10)
            # Three together: the batch has company, so the next one waits for more and takes the later two.
            await asyncio.wait_for(b.submit(torch.zeros(3, 3, 2, 2)), 10)
            b.max_delay = 0.5
            first = asyncio.ensure_future(b.submit(image))
            await asyncio.sleep(0.05)
            await asyncio.wait_for(asyncio.gather(first, b.submit(image)), 10)
            await b.stop()
    asyncio.run(go())
    assert sizes == [1, 1, 2, 1, 2]


def test_the_engine_is_warmed_up_at_every_piece_size():
    from inceptionv3.serve.batcher import chunks, piece_sizes
    from inceptionv3.serve.service import warm_up

    assert piece_sizes(32) == [1, 2, 4, 8, 16, 32] and piece_sizes(12) == [1, 2, 4, 8] and piece_sizes(1) == [1]
    assert {n for b in range(1, 13) for _, n in chunks(b)} == set(piece_sizes(12))
    shapes = []
    warm_up(lambda x: shapes.append(tuple(x.shape)), (3, 5, 5), 6)
    assert shapes == [(1, 3, 5, 5)] * 8 + [(2, 3, 5, 5)] * 4 + [(4, 3, 5, 5)] * 2


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")
def test_backend_auto_serves_on_openvino(tmp_path, monkeypatch):
    # A server is a long job: backend auto runs the exported graph on OpenVINO, as a large predict job does,
    # and answers as the torch engine does. The seed network keeps the export short; the exporter's own
    # temporary files go to a folder of this test, not the module server's spool.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    weights = make_weights(tmp_path / "mini.safetensors", arch="inception_mini")
    images = make_images(tmp_path / "images", n=2)
    expected = {Path(r["path"]).name: r["predictions"] for r in predict(images, weights=weights, top_k=3,
                                                                        workers=0, backend="torch")}
    with running_server(ServeConfig(weights=str(weights), port=0, max_batch=4)) as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        assert "| openvino fp32 on cpu |" in c.get("/v1/model").json()["engine"]
        r = c.post("/v1/predict?top_k=3", files=[("file", (p.name, p.read_bytes())) for p in images])
    assert r.status_code == 200, r.text
    for got in r.json():
        assert _close(got["predictions"], expected[got["path"]])
    cached = [p.name for p in Path(os.environ["INCEPTIONV3_HOME"]).rglob("*.onnx")]
    assert len(cached) == 1     # the export, once, in the engine cache


def _metrics(client) -> dict[str, float]:
    """The exposition's samples, ``name{labels}`` -> value (comments skipped)."""
    text = client.get("/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_metrics_count_requests_errors_and_batches(server, client, files):
    before = _metrics(client)
    image = files["images"][0].read_bytes()
    png = {"content-type": "image/png"}
    assert client.post("/v1/predict", files=[("file", ("a.png", image)), ("file", ("b.png", image))]).status_code == 200
    assert client.post("/v1/predict", content=b"\0" * (2 * 2**20), headers=png).status_code == 413
    assert client.post("/v1/predict", content=b"not an image", headers=png).status_code == 422
    assert client.post("/v1/predict", json={"image": "x"}).status_code == 400
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        assert anon.post("/v1/predict", content=image).status_code == 401
    after = _metrics(client)

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)
    assert grew('inceptionv3_requests_total{route="/v1/predict",status="200"}') == 1
    for kind in ("too_large", "bad_image", "unauthorized", "bad_request"):
        assert grew(f'inceptionv3_errors_total{{kind="{kind}"}}') == 1, kind
    assert grew('inceptionv3_images_total{output="logits"}') == 2
    assert grew('inceptionv3_request_seconds_count{route="/v1/predict"}') == 5
    assert grew('inceptionv3_batch_size_sum{output="logits"}') == 2
    assert 'inceptionv3_queue_depth{output="logits"}' in after


def test_openapi_and_pages_use_no_external_resources(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/features", "/v1/explain", "/v2/models/{name}/infer", "/metrics"):
        assert path in spec["paths"], path
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/style.css"):
        body = client.get(path).text
        assert "http://" not in body and "https://" not in body and "//cdn" not in body, path
    assert client.get("/redoc").status_code == 404   # FastAPI's CDN-loading pages are off
    docs = client.get("/docs").text
    if importlib.util.find_spec("swagger_ui_bundle") is not None:   # the interactive page, from local files
        assert "/static/swagger/swagger-ui-bundle.js" in docs and '"validatorUrl": null' in docs
        js = client.get("/static/swagger/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000
        assert client.get("/static/swagger/swagger-ui.css").status_code == 200


def test_the_server_wrote_nothing_to_disk(server, files):
    assert list(server.spool.iterdir()) == []
    home = Path(os.environ["INCEPTIONV3_HOME"])
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))
    assert sorted(p.name for p in files["root"].iterdir()) == ["images", "model.safetensors"]


def test_bad_flags_are_one_line_errors(files, capsys):
    assert main(["serve", "--weights", str(files["weights"]), "--max-batch", "0"]) == 2
    assert "--max-batch must be an integer >= 1" in capsys.readouterr().err
    assert main(["serve", "--weights", str(files["root"] / "missing.safetensors"), "--port", "0"]) == 2
    assert "no such weights file" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--weights", str(files["weights"]), "--port", str(port)]) == 2
        assert "cannot listen there" in capsys.readouterr().err


def test_the_command_prints_its_address_and_drains_on_sigterm(files, tmp_path):
    weights = make_weights(tmp_path / "w" / "mini.safetensors", arch="inception_mini")
    work = tmp_path / "cwd"
    work.mkdir()
    env = dict(os.environ, INCEPTIONV3_NUM_THREADS="1", INCEPTIONV3_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "inceptionv3", "serve", "--weights", str(weights),
                             "--port", "0", "--backend", "torch"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "mini on http://127.0.0.1:" in line and "token: required" in line, line + proc.stderr.read()
        url = line.split(" on ", 1)[1].split()[0]
        wait_ready(url)
        # In flight when SIGTERM comes: half its body sent; the rest follows the signal, and it is answered.
        data = files["images"][0].read_bytes()
        port = int(url.rsplit(":", 1)[1])
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: image/png\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head + data[: len(data) // 2])
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            sock.sendall(data[len(data) // 2:])
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert b'"predictions"' in reply
        assert proc.wait(60) == 0
        assert "SIGTERM: answering the requests in flight" in proc.stderr.read()
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/v2/health/live", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(work.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc")
def test_memory_stays_flat_under_a_bounded_soak(tmp_path):
    # The server in its own process, so that its resident set is its own; the benchmark's --soak runs it
    # for minutes on the full-size network (docs/serving.md). A MALLOC_ setting turns off the server's
    # keeping of freed memory, so that the resident set follows what is alive: memory kept from the
    # warm-up's batches would otherwise take in a leak unseen until it outgrew them.
    weights = make_weights(tmp_path / "model.safetensors")
    env = dict(os.environ, INCEPTIONV3_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    proc = subprocess.Popen([sys.executable, "-m", "inceptionv3", "serve", "--weights", str(weights),
                             "--port", "0", "--backend", "torch", "--max-batch", "4"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(2)
    bodies = []
    for _ in range(4):     # photo-sized uploads of noise: about 0.2 MB each, 0.9 MB decoded
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        bodies.append(buf.getvalue())
    try:
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split()[0]

        def client(n: int, stop_at: float) -> int:
            done = 0
            with httpx.Client(base_url=url, timeout=60) as c:
                while done < n and time.monotonic() < stop_at:
                    body = bodies[done % len(bodies)]
                    r = (c.post("/v1/predict", content=body) if done % 3 else
                         c.post("/v1/features", files=[("file", ("a", body)), ("file", ("b", body))]))
                    assert r.status_code == 200, r.text
                    done += 1
            return done

        def soak(n: int, seconds: float) -> int:
            from concurrent.futures import ThreadPoolExecutor
            stop_at = time.monotonic() + seconds
            with ThreadPoolExecutor(4) as pool:
                return sum(pool.map(client, [n] * 4, [stop_at] * 4))

        wait_ready(url)
        soak(20, 30)                           # warm-up: every batch shape, the allocator's pools
        start = status_mb("VmRSS", proc.pid)
        done = soak(100, 20)
        end = status_mb("VmRSS", proc.pid)
        print(f"soak: {done} requests; resident set {start:.0f} MB after the warm-up, {end:.0f} MB at the end")
        assert done >= 100
        # Each request brings 0.2 to 0.4 MB of body and decodes 0.9 MB a file: a leak of either, or of
        # anything a request allocates per image, adds a hundred MB or more here.
        assert end - start < 30, (start, end)
    finally:
        proc.kill()
        proc.wait()
