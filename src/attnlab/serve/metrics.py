"""Prometheus metrics of one app (GET /metrics, text format), in a registry of its own so that
several apps in one process (the tests) do not collide.

    attnlab_requests_total{route, status}          answered requests
    attnlab_request_seconds{route}                 latency histogram
    attnlab_rejected_total{reason}                 refused before any model work (budget, cap, busy, ...)
    attnlab_queue_depth                            places waiting for the model
    attnlab_batch_sentences{lane}                  sentences per decoding call (histogram)
    attnlab_decode_seconds{lane}                   seconds per decoding call (histogram)
    attnlab_output_tokens_total                    tokens decoded; rate() of it is tokens/s
    attnlab_tokens_per_second                      of the last decoding call

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("/translate", "/caption", "/health", "/ready", "/metrics", "/", "/openapi.json", "/docs")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def route_of(path: str) -> str:
    """A bounded label: known routes, /static, or 'other' (never the caller's raw path)."""
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("attnlab_requests", "answered requests", ["route", "status"], registry=r)
        self.latency = Histogram("attnlab_request_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.rejected = Counter("attnlab_rejected", "requests refused, by reason", ["reason"], registry=r)
        self.queue = Gauge("attnlab_queue_depth", "places waiting for the model", registry=r)
        self.queue.set_function(queue_depth)
        self.batch = Histogram("attnlab_batch_sentences", "sentences per decoding call", ["lane"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.decode = Histogram("attnlab_decode_seconds", "seconds per decoding call", ["lane"],
                                buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("attnlab_output_tokens", "output tokens decoded", registry=r)
        self.tokens_per_s = Gauge("attnlab_tokens_per_second", "output tokens per second of the last decoding call",
                                  registry=r)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, lane: str, sentences: int, seconds: float, tokens: int) -> None:
        self.batch.labels(lane).observe(sentences)
        self.decode.labels(lane).observe(seconds)
        self.tokens.inc(tokens)
        if seconds > 0:
            self.tokens_per_s.set(tokens / seconds)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
