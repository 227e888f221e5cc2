"""Prometheus metrics and health of the trainer service, fed from what :meth:`TrainerService.tick` returns.

The loop in ``tagloop trainer run`` reports each tick (its :class:`TickResult`, or the error it
raised) and what serves after it (champion, canary and its share, read from the model registry);
nothing here does I/O, so the same object is tested without Postgres or Triton.

Examples
--------
>>> from services.trainer.service import TickResult
>>> m = TrainerMetrics()
>>> m.ready()
(False, 'recovering interrupted jobs')
>>> m.observe_recovery([])
>>> m.observe_tick(TickResult("rolled-back", candidate=7), seconds=0.2, now=1000.0)
>>> m.registry.get_sample_value("tagloop_trainer_rollbacks_total")
1.0
>>> m.observe_tick_failure(RuntimeError("postgres down"), seconds=5.0)
>>> m.ready()
(False, 'last tick failed: RuntimeError: postgres down')
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from services.trainer.jobs import JobRecord
    from services.trainer.service import TickResult

# A tick is a few queries (~0.1 s); one that runs a job trains and scores, a minute or more.
TICK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class TrainerMetrics:
    """All trainer metrics in one registry of their own (nothing registered at import time)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.ticks = Counter("tagloop_trainer_ticks", "Ticks by what they did", ["action"], registry=r)
        self.tick_failures = Counter("tagloop_trainer_tick_failures", "Ticks that raised an error", registry=r)
        self.tick_seconds = Histogram("tagloop_trainer_tick_seconds", "Duration of one tick (a job included)",
                                      buckets=TICK_BUCKETS, registry=r)
        self.last_tick = Gauge("tagloop_trainer_last_tick_timestamp_seconds",
                               "Unix time of the last tick that completed (0: none yet)", registry=r)
        self.jobs = Counter("tagloop_trainer_jobs", "Jobs that ended, by status (succeeded, rejected, failed)",
                            ["status"], registry=r)
        self.job_seconds = Histogram("tagloop_trainer_job_seconds", "Wall time of a job that ended",
                                     buckets=TICK_BUCKETS, registry=r)
        self.gate = Counter("tagloop_trainer_gate_decisions", "Gate decisions by outcome (blessed, rejected)",
                            ["outcome"], registry=r)
        self.promotions = Counter("tagloop_trainer_promotions", "Canaries promoted to champion", registry=r)
        self.rollbacks = Counter("tagloop_trainer_rollbacks", "Canaries rolled back", registry=r)
        self.champion = Gauge("tagloop_trainer_champion_version", "Version serving as champion (0: none)",
                              registry=r)
        self.canary = Gauge("tagloop_trainer_canary_version", "Version in canary (0: none)", registry=r)
        self.canary_share = Gauge("tagloop_trainer_canary_share", "Share of listings routed to the canary",
                                  registry=r)
        for status in ("succeeded", "rejected", "failed"):  # exported as 0 before the first job: rate() works
            self.jobs.labels(status)
        for outcome in ("blessed", "rejected"):
            self.gate.labels(outcome)
        self._lock = threading.Lock()
        self._recovered = False
        self._last_error: str | None = None

    # -- what the loop reports ------------------------------------------------------------

    def observe_recovery(self, interrupted: Iterable[JobRecord]) -> None:
        """Jobs a dead trainer left running, now marked failed: counted as failed jobs."""
        for _ in interrupted:
            self.jobs.labels("failed").inc()
        with self._lock:
            self._recovered = True

    def observe_tick(self, result: TickResult, seconds: float, now: float) -> None:
        self.ticks.labels(result.action).inc()
        self.tick_seconds.observe(seconds)
        self.last_tick.set(now)
        if result.job is not None:
            self.observe_job(result.job)
        if result.decision is not None:
            self.gate.labels("blessed" if result.decision.blessed else "rejected").inc()
        if result.action == "promoted":
            self.promotions.inc()
        elif result.action == "rolled-back":
            self.rollbacks.inc()
        with self._lock:
            self._last_error = None

    def observe_job(self, job: JobRecord) -> None:
        self.jobs.labels(job.status).inc()
        if job.seconds is not None:
            self.job_seconds.observe(job.seconds)

    def observe_tick_failure(self, error: BaseException, seconds: float, failed_job: JobRecord | None = None) -> None:
        """A tick raised; ``failed_job`` is the job it left failed, if it had started one."""
        self.tick_failures.inc()
        self.tick_seconds.observe(seconds)
        if failed_job is not None:
            self.observe_job(failed_job)
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        with self._lock:
            self._last_error = f"{type(error).__name__}: {text}" if text else type(error).__name__

    def observe_serving(self, champion: int | None, canary: int | None, canary_share: float) -> None:
        self.champion.set(champion or 0)
        self.canary.set(canary or 0)
        self.canary_share.set(canary_share if canary is not None else 0.0)

    # -- what /healthz and /readyz read -----------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Ready once interrupted jobs are recovered and while the last tick did not fail."""
        with self._lock:
            if not self._recovered:
                return False, "recovering interrupted jobs"
            if self._last_error is not None:
                return False, f"last tick failed: {self._last_error}"
        return True, ""
