"""What the server runs: the model loaded once, its engines (logits at start, other outputs on first use),
one batcher per output, image decoding in a thread pool, and explanations in the engine's thread.

A server is a long job: backend "auto" takes the backend a large ``predict`` job takes (OpenVINO where it
is installed, its graph exported once to the engine cache), and every batch shape the batcher makes is
run once before the server answers, so no request pays a kernel build or a compile.

Decoding goes through ``data.decode.load_image`` and the weights' eval transform, as ``predict`` does, so
an upload is refused for the same reasons and classified the same way as the same file on disk. It runs
on few threads (one per ``CORES_PER_DECODER`` cores), each with torch on one thread: one thread decodes
a 500 x 375 JPEG in a few ms, faster than a few cores run the network, and every extra thread would
take a core from the engine, whose threads wait for each other at every layer.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..data.decode import ImageError, load_image
from ..engine.engine import Engine, build_engine
from ..engine.inputs import image_mode, model_transform
from ..engine.options import AUTO_EXPORT_MIN_IMAGES, EngineOptions
from ..models.taps import TAPS
from ..runtime.threads import available_cores, resolve_device, set_compute_threads
from ..tasks.predict import top_k_predictions
from ..weights.load import load_model
from .batcher import Batcher, piece_sizes, stack
from .config import ServeConfig
from .metrics import ServerMetrics
from .uploads import Failure, Upload

log = logging.getLogger(__name__)

CORES_PER_DECODER = 4
# Images each small piece size is warmed up with: a compiled shape's first few calls run slower than the
# ones after (buffers first touched), and the small shapes are the ones a lone request's latency meets.
WARM_UP_IMAGES = 8


def serving_engine(model: torch.nn.Module, output: str, options: EngineOptions) -> Engine:
    """The engine a server runs for ``output``: built as for a job of many images, so that backend "auto"
    takes the exported backend where its one-time export pays off."""
    return build_engine(model, output, options, images=AUTO_EXPORT_MIN_IMAGES)


def warm_up(engine: Engine, input_shape: tuple[int, int, int], max_batch: int) -> None:
    """Run ``engine`` on zeros at every piece size the batcher makes for ``max_batch`` (oneDNN's kernels,
    OpenVINO's export and compiled shapes), so that no request pays for them: each size at least once,
    the small ones ``WARM_UP_IMAGES // size`` times."""
    for n in piece_sizes(max_batch):
        x = torch.zeros(n, *input_shape)
        for _ in range(max(1, WARM_UP_IMAGES // n)):
            engine(x)


def _one_torch_thread() -> None:
    torch.get_num_threads()     # this thread's own setting made first, so the one below stays its own
    torch.set_num_threads(1)


class Service:
    """The model behind the endpoints; ``start``/``stop`` run inside the app's event loop."""

    def __init__(self, config: ServeConfig, metrics: ServerMetrics) -> None:
        self.config, self.metrics = config, metrics
        self.options = EngineOptions(device=config.device, precision=config.precision, backend=config.backend,
                                     batch_size=config.max_batch, workers=0, threads=config.threads)
        self.device = resolve_device(config.device)
        set_compute_threads(0, config.threads)
        self.model = load_model(config.weights)
        self.meta = self.model.meta
        self.transform = model_transform(self.model)
        self.mode = image_mode(self.model)
        self.input_shape = (getattr(self.model, "in_chans", 3), self.meta.preprocess.input_size,
                            self.meta.preprocess.input_size)
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="inceptionv3-engine")
        self.decode_threads = max(1, available_cores() // CORES_PER_DECODER)
        self.decoders = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="inceptionv3-decode",
                                           initializer=_one_torch_thread)
        # Built here, so that a choice this machine cannot run is one clear error before the server listens.
        self.engines: dict[str, Engine] = {"logits": serving_engine(self.model, "logits", self.options)}
        self.batchers: dict[str, Batcher] = {}
        self._building = asyncio.Lock()
        self._explain_model: torch.nn.Module | None = None
        self.ready = False

    @property
    def name(self) -> str:
        return self.config.model_name

    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names or [str(i) for i in range(self.meta.num_classes)]

    def describe(self) -> dict[str, Any]:
        """What the page and ``GET /v1/model`` show: the model, its classes, preprocessing and engine."""
        return {"name": self.name, "arch": self.meta.arch, "source": self.meta.source,
                "sha256": self.meta.sha256, "num_classes": self.meta.num_classes, "classes": self.class_names,
                "preprocess": self.meta.preprocess.to_dict(), "input_shape": list(self.input_shape),
                "engine": self.engines["logits"].describe(), "top_k": self.config.top_k,
                "max_batch": self.config.max_batch, "max_upload_mb": self.config.max_upload_mb,
                "token_required": self.config.token is not None, "features": list(TAPS)}

    async def start(self) -> None:
        await self.batcher("logits")     # built and warmed up in the engine thread, which sets its torch threads
        self._start_decoders()
        self.ready = True

    def _start_decoders(self) -> None:
        """Start every decode thread now, each setting torch to one thread for itself; then give back the
        process-wide setting, which threads started later inherit."""
        threads = torch.get_num_threads()
        started = threading.Barrier(self.decode_threads + 1)
        for _ in range(self.decode_threads):
            self.decoders.submit(started.wait, 30)
        started.wait(30)
        torch.set_num_threads(threads)

    async def stop(self) -> None:
        self.ready = False
        for b in self.batchers.values():
            await b.stop()
        self.compute.shutdown(wait=True)
        self.decoders.shutdown(wait=True)

    async def batcher(self, output: str) -> Batcher:
        """The batcher for ``output``; its engine is built (in the engine thread) on first use."""
        if output not in TAPS:
            raise Failure(400, "bad_request", f"unknown layer {output!r}; choose one of {', '.join(TAPS)}")
        if output not in self.batchers:
            async with self._building:
                if output not in self.batchers:
                    loop = asyncio.get_running_loop()
                    self.engines[output] = await loop.run_in_executor(self.compute, self._ready_engine, output)
                    c = self.config
                    self.batchers[output] = Batcher(output, self.engines[output], self.compute, self.metrics,
                                                    c.max_batch, c.max_delay_ms / 1000, c.max_queue)
                    self.batchers[output].start()
        return self.batchers[output]

    def _ready_engine(self, output: str) -> Engine:
        """``output``'s engine (built here unless it was), warmed up; runs in the engine thread."""
        engine = self.engines.get(output) or serving_engine(self.model, output, self.options)
        warm_up(engine, self.input_shape, self.config.max_batch)
        return engine

    def _decode(self, upload: Upload) -> torch.Tensor:
        return self.transform(load_image(upload.name, self.mode, data=upload.data))

    async def decode(self, uploads: list[Upload]) -> torch.Tensor:
        """N x C x H x W preprocessed images, decoded in the thread pool; 422 naming each file that failed."""
        if len(uploads) > self.config.max_queue:
            raise Failure(413, "too_large", f"{len(uploads)} images in one request; the server queues at most "
                                            f"{self.config.max_queue} (--max-queue): send fewer per request")
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self.decoders, self._decode, u) for u in uploads),
                                       return_exceptions=True)
        failed = [f"{u.name}: {r.reason}" for u, r in zip(uploads, results) if isinstance(r, ImageError)]
        if failed:
            raise Failure(422, "bad_image", "; ".join(failed))
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return stack(results)   # type: ignore[arg-type]

    async def run(self, output: str, images: torch.Tensor) -> torch.Tensor:
        return await (await self.batcher(output)).submit(images)

    def predictions(self, logits: torch.Tensor, top_k: int) -> list[list[dict]]:
        """Each image's top-k as ``predict`` reports them: index, label, probability, best first."""
        return top_k_predictions(logits, top_k, self.meta.class_names)

    def _explain(self, images: torch.Tensor, target: int | None, method: str, layer: str | None,
                 alpha: float) -> list[dict]:
        from ..tasks.explain import explain, input_view, overlay

        if self._explain_model is None:
            # Attributions need the plain fp32 network with gradients, not the fused inference graph.
            self._explain_model = self.model.to(self.device).float()
        result = explain(self._explain_model, images, target=target, method=method, layer=layer)
        out = []
        for x, heat, t, s in zip(images, result.maps, result.targets, result.scores):
            out.append({"map": heat, "target": t, "score": s,
                        "overlay": overlay(input_view(x, self.meta.preprocess), heat, alpha)})
        return out

    async def explain(self, images: torch.Tensor, target: str | None, method: str, layer: str | None,
                      alpha: float) -> list[dict]:
        """Explanations of ``images`` (in the engine thread: one computation at a time)."""
        from ..tasks.explain import check_method, resolve_target

        try:
            check_method(method)
            index = resolve_target(target, self.meta.class_names, self.meta.num_classes)
        except ValueError as e:
            raise Failure(400, "bad_request", str(e).replace("--target", "target")) from None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.compute, self._explain, images, index, method, layer, alpha)
        except ValueError as e:
            raise Failure(400, "bad_request", str(e)) from None


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())
