"""What the serve tests share: a tiny weights file, distinct images, a real server on 127.0.0.1 (uvicorn in a
thread, on a free port), and the wait for a server started as a command. No tests here."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from inceptionv3 import build_model
from inceptionv3.weights.io import save_model
from inceptionv3.weights.preprocess import Preprocess

CLASSES = ["cat", "dog", "fish"]
PREPROCESS = Preprocess(input_size=75, resize_size=80, interpolation="bilinear")


def make_weights(path: Path, arch: str = "inception_v3") -> Path:
    """inception_v3 at 75 px without aux (or the seed network at 32 px, quicker to start), 3 classes; a
    small head so the probabilities are not all 0 or 1."""
    torch.manual_seed(0)
    if arch == "inception_v3":
        model = build_model(arch, num_classes=3, aux_logits=False)
        with torch.no_grad():
            model.fc.weight.normal_(0, 2e-5)
        save_model(model, path, class_names=CLASSES, preprocess=PREPROCESS)
    else:
        model = build_model(arch, num_classes=3)
        save_model(model, path, class_names=CLASSES, preprocess=Preprocess(input_size=32, resize_size=32))
    return path


def wait_ready(url: str, seconds: float = 60) -> None:
    """Until ``url``'s readiness probe answers 200: ``inceptionv3 serve`` prints its address as it starts."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready in {seconds:.0f} s")


def make_images(folder: Path, n: int = 6) -> list[Path]:
    """``n`` distinct images (PNG and JPEG, different sizes and content), so answers can be told apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        h, w = 80 + 7 * i, 90 + 11 * i
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        arr[: h // 2, : w // 2] = (40 * i) % 256       # a block whose place and colour differ per image
        path = folder / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


@dataclass
class Running:
    url: str
    port: int
    app: object

    @property
    def service(self):
        return self.app.state.service


@contextlib.contextmanager
def running_server(config) -> Iterator[Running]:
    """``config``'s app served by uvicorn in a thread on 127.0.0.1 (port 0: a free one), stopped after."""
    import uvicorn

    from inceptionv3.serve.app import create_app

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}", port, app)
    finally:
        server.should_exit = True
        thread.join(30)
