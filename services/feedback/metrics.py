"""The feedback worker's Prometheus metrics and its stage timings (for the benchmark)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Prometheus metrics of one worker, in their own registry (nothing global at import)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter("feedback_events", "Feedback events by outcome", ["outcome"], registry=self.registry)
        self.pending = Counter(
            "feedback_unattributed_events",
            "Events archived before their listing's tags were known",
            registry=self.registry,
        )
        self.reattributed = Counter(
            "feedback_reattributed_events",
            "Pending events attributed after tags arrived",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "feedback_batch_seconds", "Postgres transaction time per batch", ["kind"], registry=self.registry
        )
        self.counter_lag = Histogram(
            "feedback_counter_lag_seconds",
            "Per rolled-up batch: seconds from its archive transaction to the rollup that counted it",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.counter_lag_max = Gauge(
            "feedback_counter_lag_max_seconds", "Largest lag of the last rollup step", registry=self.registry
        )
        self.rollup_seconds = Histogram(
            "feedback_rollup_step_seconds", "Duration of a rollup step that counted batches", registry=self.registry
        )


@dataclass
class Timings:
    """Seconds spent per stage, for the benchmark's 'where the time goes'."""

    decode: float = 0.0
    postgres: float = 0.0
    dead_letter: float = 0.0
    rollup: float = 0.0
    waited_for_rollup: float = 0.0
    batches: int = 0
    events: int = 0
    started: float = field(default_factory=time.monotonic)
    first_batch: float | None = None
    counter_lags_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "decode_s": self.decode,
            "postgres_s": self.postgres,
            "dead_letter_s": self.dead_letter,
            "rollup_s": self.rollup,
            "waited_for_rollup_s": self.waited_for_rollup,
            "batches": self.batches,
            "events": self.events,
            "busy_since_first_batch_s": (time.monotonic() - self.first_batch) if self.first_batch else None,
            "counter_lags_s": [round(x, 4) for x in self.counter_lags_s],
        }
