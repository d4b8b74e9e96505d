"""The dynamic batcher: requests' images wait in one bounded queue per engine output and run together.

A batch starts with the oldest waiting image and takes whatever else is waiting or arrives within
``max_delay``, up to ``max_batch`` images; while the engine computes one batch the next one gathers, so
under load the batches fill without waiting at all. The wait for company is made only when the last
batch found some: a lone client, or the first request after a quiet spell, runs at once rather than
waiting ``max_delay`` for no one. A batch runs as power-of-two pieces (``chunks``), so the engine sees
few shapes (``piece_sizes``, which the service warms up before it serves). The engine runs in one worker thread (shared by
every output and by the explanations: one computation at a time uses the cores best), off the event loop.
A full queue raises ``QueueFull`` (the app answers 503 with Retry-After) instead of growing. An image
whose request has gone (the client disconnected, its future cancelled) is dropped before its batch runs,
and answers are only set on futures still waiting, so a departed client never stalls the loop.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

from .metrics import ServerMetrics

log = logging.getLogger(__name__)


def chunks(n: int) -> list[tuple[int, int]]:
    """(start, size) pieces of a batch of ``n``, each a power of two, largest first (13 -> 8 + 4 + 1).

    The engine then sees a handful of batch shapes, not every size up to --max-batch: each new shape
    costs oneDNN (and cuDNN) a kernel build on first use and a place in its cache, which under varying
    load would be paid again and again.
    """
    out, start = [], 0
    while n > 0:
        size = 1 << (n.bit_length() - 1)
        out.append((start, size))
        start, n = start + size, n - size
    return out


def piece_sizes(max_batch: int) -> list[int]:
    """Every piece size ``chunks`` makes for batches of up to ``max_batch`` images: 1, 2, 4, ... <= max_batch."""
    return [1 << i for i in range(max_batch.bit_length())]


def stack(images: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, but one image as a view: a lone request's megabyte is not copied on its way to the
    engine (a fresh buffer of that size costs its page faults, a fraction of a millisecond here)."""
    return images[0].unsqueeze(0) if len(images) == 1 else torch.stack(images)


class QueueFull(Exception):
    """The batcher holds ``max_queue`` images already; ``retry_after`` seconds is a fair wait."""

    def __init__(self, output: str, waiting: int, limit: int, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the {output} queue is full ({waiting} images waiting, limit {limit}); "
                         f"retry in {retry_after} s")


@dataclass
class _Item:
    image: torch.Tensor                     # C x H x W, preprocessed
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """``await batcher.submit(images) -> outputs``: N x C x H x W in, N x D out, batched with other requests."""

    def __init__(self, output: str, run: Callable[[torch.Tensor], torch.Tensor], executor: Executor,
                 metrics: ServerMetrics, max_batch: int = 32, max_delay: float = 0.005,
                 max_queue: int = 256) -> None:
        self.output, self.run, self.executor, self.metrics = output, run, executor, metrics
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._seconds_per_image = 0.05      # a running estimate, for Retry-After
        self._company = False               # whether the last batch held more than one image
        self._depth = metrics.queue_depth.labels(output)
        self._batch_size = metrics.batch_size.labels(output)
        self._engine_seconds = metrics.engine_seconds.labels(output)
        self._queue_seconds = metrics.queue_seconds.labels(output)
        self._images = metrics.images.labels(output)

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.output}")

    async def stop(self) -> None:
        """Stop the loop; images still waiting get an error (the server stops after its requests drained)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is stopping"))
        self._depth.set(0)

    async def submit(self, images: torch.Tensor) -> torch.Tensor:
        """The engine's output for each of ``images`` (N x C x H x W), in order; QueueFull when there is
        no room for all N. Cancelling the caller drops its images that have not run yet."""
        n = len(images)
        if self.waiting + n > self.max_queue:
            retry = max(1, math.ceil(self.waiting * self._seconds_per_image))
            raise QueueFull(self.output, self.waiting, self.max_queue, retry)
        self.start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(n)]
        for image, future in zip(images, futures):
            self._queue.put_nowait(_Item(image, future))
        self._depth.set(self.waiting)
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return torch.stack(rows) if rows else torch.empty(0)

    async def _gather(self) -> list[_Item]:
        """The next batch: the oldest image, then what is waiting or arrives within max_delay (when the
        last batch had company), up to max_batch."""
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + (self.max_delay if self._company else 0.0)
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except (asyncio.TimeoutError, TimeoutError):
                break
        self._company = len(batch) > 1
        self._depth.set(self.waiting)
        return [item for item in batch if not item.future.done()]   # done: its request was cancelled

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            t0 = time.perf_counter()
            for item in batch:
                self._queue_seconds.observe(t0 - item.queued)
            try:
                out = await loop.run_in_executor(self.executor, self._run, [item.image for item in batch])
            except Exception as e:   # the requests get the error; the loop goes on
                log.exception("engine call for %d images failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            seconds = time.perf_counter() - t0
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / len(batch)
            self._batch_size.observe(len(batch))
            self._engine_seconds.observe(seconds)
            self._images.inc(len(batch))
            for item, row in zip(batch, out):
                if not item.future.done():
                    item.future.set_result(row)

    def _run(self, images: list[torch.Tensor]) -> torch.Tensor:
        x = stack(images)
        out = torch.cat([self.run(x[start:start + n]) for start, n in chunks(len(x))])
        if len(out) != len(images):
            raise RuntimeError(f"the engine returned {len(out)} rows for {len(images)} images")
        return out
