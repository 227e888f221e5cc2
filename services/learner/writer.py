"""Checkpoint writes off the learner's loop: one in flight at most, failures retried with backoff.

The loop takes the snapshot (a fork, or a pickle where fork is unavailable) and goes
on learning while a thread (or the forked child) writes it to Postgres. A write that
fails -- Postgres restarting, a session terminated, a full or read-only database -- is
never raised into the loop: it is counted, reported as degraded health, and the next
checkpoint (with everything learned since) is attempted after an exponential backoff.
The model in memory is unaffected by a failed write, and every write opens a fresh
connection, so the first one after the database is back succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from services.learner.checkpoint import Checkpoint, Offsets, PostgresCheckpoints, dumps, save_forked
from services.learner.health import LearnerHealth, describe
from services.learner.model import AffinityModel

log = logging.getLogger("tagloop.learner")


class CheckpointError(RuntimeError):
    """A checkpoint the learner must have (the final one at stop) could not be written."""


@dataclass(frozen=True)
class Backoff:
    """``base_s * 2**(n-1)`` after the n-th consecutive failure, capped at ``cap_s``."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** max(0, failures - 1))


class CheckpointWriter:
    """Writes checkpoints of one learner in the background and keeps score of failures.

    Parameters
    ----------
    repo
        Where checkpoints go.
    health
        Told of every success and failure (metrics, degraded status).
    forked
        Snapshot by fork (see :func:`~services.learner.checkpoint.save_forked`) instead of pickling.
    on_checkpoint
        Called from the writer thread with ``(id, stats)`` after each successful write.
    """

    def __init__(
        self,
        repo: PostgresCheckpoints,
        health: LearnerHealth,
        *,
        forked: bool,
        on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo, self.health, self.forked = repo, health, forked
        self.on_checkpoint, self.backoff, self.clock = on_checkpoint, backoff, clock
        self.failures = 0  # consecutive
        self._retry_at = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._in_flight: Future[Checkpoint] | None = None

    def can_start(self) -> bool:
        """No write in flight (or one finished but not yet collected) and no backoff to wait out."""
        return self._in_flight is None and self.clock() >= self._retry_at

    def retry_due(self) -> bool:
        """The last write failed and its backoff is over: checkpoint now, whatever the schedule says."""
        return self.failures > 0 and self.can_start()

    def start(self, model: AffinityModel, offsets: Offsets) -> None:
        """Snapshot ``model`` with ``offsets`` now (hold the model's lock) and write it in the background."""
        assert self._in_flight is None, "one checkpoint in flight at most"
        stats = model.stats()
        if self.forked:
            try:
                wait_child = save_forked(self.repo, model, offsets)
            except OSError as exc:  # fork refused (memory, process limit): a failed write like any other
                self._in_flight = Future()
                self._in_flight.set_exception(exc)
                return
        else:
            blob = dumps(model)
        started = time.perf_counter()

        def write() -> Checkpoint:
            if self.forked:
                cp_id = wait_child()
            else:
                cp_id, _ = self.repo.save_serialized(blob, offsets, model.name, int(stats["events_seen"]), stats)
            self.health.checkpoint_written(time.perf_counter() - started)
            if self.on_checkpoint is not None:
                self.on_checkpoint(cp_id, stats)
            return Checkpoint(model=model, offsets=offsets, id=cp_id)

        self._in_flight = self._pool.submit(write)

    def collect(self) -> Checkpoint | None:
        """The checkpoint just written, if a write finished successfully; a failure is recorded, not raised."""
        future = self._in_flight
        if future is None or not future.done():
            return None
        self._in_flight = None
        error = future.exception()
        if error is None:
            self.failures, self._retry_at = 0, 0.0
            return future.result()
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        self._retry_at = self.clock() + delay
        self.health.checkpoint_failed(error, self.failures, delay)
        log.warning("checkpoint failed (%d in a row), next try in %.1fs: %s", self.failures, delay, describe(error))
        return None

    def wait(self) -> Checkpoint | None:
        """Wait for the write in flight, if any, and collect it."""
        if self._in_flight is not None:
            wait_futures([self._in_flight])
        return self.collect()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
