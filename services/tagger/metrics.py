"""Prometheus metrics of the tagger and its small HTTP endpoint (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class TaggerMetrics:
    """All tagger metrics in one registry of their own (nothing registered at import time)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.consumed = Counter("tagloop_tagger_events_consumed", "Listing records consumed", registry=r)
        self.produced = Counter(
            "tagloop_tagger_events_produced", "Tag records produced", ["kind"], registry=r
        )
        self.dead_lettered = Counter(
            "tagloop_tagger_events_dead_lettered", "Records sent to the dead-letter topic", registry=r
        )
        self.skipped_unchanged = Counter(
            "tagloop_tagger_events_unchanged", "Updates skipped because the tagged text did not change",
            registry=r,
        )
        self.batch_size = Histogram(
            "tagloop_tagger_batch_size", "Listings per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.triton_latency = Histogram(
            "tagloop_tagger_triton_latency_seconds", "Triton inference latency per batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.end_to_end = Histogram(
            "tagloop_tagger_end_to_end_seconds", "Listing event ts to tag record delivered",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.consumer_lag = Gauge(
            "tagloop_tagger_consumer_lag", "Records behind the end of each partition",
            ["topic", "partition"], registry=r,
        )
        self.by_version = Counter(
            "tagloop_tagger_tagged_by_version", "Listings tagged, by the model version that tagged them",
            ["version"], registry=r,
        )
        self.shadow_items = Counter(
            "tagloop_tagger_shadow_items", "Listings also tagged by a shadow candidate", registry=r
        )
        self.shadow_disagreements = Counter(
            "tagloop_tagger_shadow_disagreements", "Shadow-tagged listings whose tag set differs", registry=r
        )
        self.circuit_open = Gauge("tagloop_tagger_circuit_open", "1 while Triton is considered down", registry=r)
        self.inflight = Gauge("tagloop_tagger_inflight_batches", "Batches being inferred", registry=r)
        self.paused = Gauge("tagloop_tagger_paused", "1 while consumption is paused (backpressure)", registry=r)


class HealthServer:
    """Serves /metrics, /healthz (process alive) and /readyz (assigned and Triton up) on loopback."""

    def __init__(self, metrics: TaggerMetrics, ready: Callable[[], bool], host: str, port: int) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a half-open connection must not hold a thread for ever
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    self._send(200, b"ok\n", "text/plain")
                elif self.path.startswith("/readyz"):
                    ok = ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # quiet access log
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="tagger-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
