"""What the learner says about itself: health (ok or degraded, and why) and Prometheus metrics.

The loop reports into one :class:`LearnerHealth`; the API turns it into ``/healthz``,
``/readyz`` and ``/metrics``. *Degraded* means the learner still learns and serves,
but what it learned is not being made durable: checkpoint writes fail, or dead letters
cannot be delivered (which holds checkpoints back). A restart would lose everything
since the last checkpoint, so degraded is something to alert on, not to restart for.

Examples
--------
>>> health = LearnerHealth()
>>> health.checkpoint_failed(OSError("disk full"), failures=1, retry_in_s=0.5)
>>> health.status()
('degraded', ['checkpoint writes failing (1 in a row, next try in 0.5s): OSError: disk full'])
>>> health.checkpoint_written(seconds=0.02)
>>> health.status()
('ok', [])
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CHECKPOINT = "checkpoint"
DEAD_LETTERS = "dead_letters"


def describe(error: BaseException) -> str:
    """One bounded line: the error's class and the first line of its message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


class LearnerHealth:
    """Health and metrics of one learner, in a registry of its own (nothing global at import)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.records = Counter("tagloop_learner_records_consumed", "Records consumed (feedback and tags)", registry=r)
        self.checkpoints = Counter("tagloop_learner_checkpoints", "Checkpoints written", registry=r)
        self.checkpoint_failures = Counter(
            "tagloop_learner_checkpoint_failures", "Checkpoint writes that failed (each is retried)", registry=r
        )
        self.last_checkpoint = Gauge(
            "tagloop_learner_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last checkpoint written (0: none yet in this process)",
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "tagloop_learner_checkpoint_seconds", "Time to write one checkpoint", registry=r
        )
        self.dead_letters = Counter("tagloop_learner_dead_letters", "Dead letters delivered", registry=r)
        self.dead_letter_failures = Counter(
            "tagloop_learner_dead_letter_failures", "Dead-letter deliveries that failed (each is retried)", registry=r
        )
        self.degraded = Gauge("tagloop_learner_degraded", "1 while the learner is degraded (see /healthz)", registry=r)
        self.lag = Gauge("tagloop_learner_lag_seconds",
                         "Now minus the broker timestamp of the newest record of the last batch (0 when idle)",
                         registry=r)
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- what the loop reports ----------------------------------------------------------

    def learned(self, record_timestamps_ms: list[int], now: float | None = None) -> None:
        """A batch was learned: how far behind the stream it was (no records: caught up).

        >>> h = LearnerHealth()
        >>> h.learned([1_000, 4_000], now=10.0); h.lag._value.get()
        6.0
        """
        newest = max(record_timestamps_ms, default=None)
        self.lag.set(0.0 if newest is None else max(0.0, (now or time.time()) - newest / 1000))

    def checkpoint_written(self, seconds: float) -> None:
        self.checkpoints.inc()
        self.checkpoint_seconds.observe(seconds)
        self.last_checkpoint.set(time.time())
        self._set(CHECKPOINT, None)

    def checkpoint_failed(self, error: BaseException, failures: int, retry_in_s: float) -> None:
        self.checkpoint_failures.inc()
        self._set(
            CHECKPOINT,
            f"checkpoint writes failing ({failures} in a row, next try in {retry_in_s:.1f}s): {describe(error)}",
        )

    def dead_letters_held(self, reason: str | None) -> None:
        """Dead letters not delivered (``reason``), so checkpoints wait; ``None`` once all are."""
        self._set(DEAD_LETTERS, reason)

    # -- what the API reads -------------------------------------------------------------

    def status(self) -> tuple[str, list[str]]:
        """``("ok", [])`` or ``("degraded", reasons)``."""
        with self._lock:
            reasons = [self._problems[k] for k in sorted(self._problems)]
        return ("degraded" if reasons else "ok"), reasons

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    def _set(self, key: str, reason: str | None) -> None:
        with self._lock:
            if reason is None:
                self._problems.pop(key, None)
            else:
                self._problems[key] = reason
            self.degraded.set(1 if self._problems else 0)
