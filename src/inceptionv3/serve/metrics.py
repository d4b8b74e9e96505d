"""The server's Prometheus metrics, on a registry of the app's own (two apps in one process, as in tests,
never share or collide): requests, errors by kind, queue depth, batch sizes and latencies."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: a cached tiny model answers in milliseconds, a 299 px batch on a small CPU in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The counters, gauges and histograms one app updates, and their text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("inceptionv3_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("inceptionv3_errors", "Requests refused or failed, by kind", ["kind"], registry=r)
        self.latency = Histogram("inceptionv3_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("inceptionv3_queue_depth", "Images waiting for the engine", ["output"],
                                 registry=r)
        self.batch_size = Histogram("inceptionv3_batch_size", "Images per engine call", ["output"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.engine_seconds = Histogram("inceptionv3_engine_seconds", "Time of one engine call", ["output"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("inceptionv3_queue_seconds", "Time an image waits for its batch",
                                       ["output"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("inceptionv3_images", "Images run through the engine", ["output"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
