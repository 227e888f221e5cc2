"""Prometheus metrics of the tagger and its small HTTP endpoint (/metrics, /healthz, /readyz)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.ops_http import OpsServer

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
            "tagloop_tagger_events_dead_lettered", "Records sent to the dead-letter topic, by error class", ["reason"],
            registry=r,
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


class HealthServer(OpsServer):
    """/metrics, /healthz (process alive) and /readyz (partitions assigned and Triton up) of a tagger."""

    def __init__(self, metrics: TaggerMetrics, ready: Callable[[], bool], host: str, port: int) -> None:
        def readiness() -> tuple[bool, str]:
            ok = ready()
            return ok, "" if ok else "no partitions assigned or Triton circuit open"

        super().__init__(metrics.registry, host, port, ready=readiness, name="tagger-http")
