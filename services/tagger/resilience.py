"""Retries with exponential backoff and a circuit breaker around Triton calls.

Unavailability is waited out, never turned into dead letters: the breaker opens,
the pipeline stops fetching new listings, and the failing batch is retried once
Triton reports ready again. Invalid-input errors are not retried; the caller
isolates and dead-letters the listings that cause them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: ``base * 2**attempt``, capped."""

    base_s: float = 0.1
    cap_s: float = 5.0
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        bound = min(self.cap_s, self.base_s * (2**attempt))
        return random.uniform(bound / 2, bound) if self.jitter else bound


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive retryable failures; closes on a success."""

    failure_threshold: int = 3
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    opened_at: float | None = None
    on_change: Callable[[CircuitState], None] | None = field(default=None, repr=False)

    @property
    def is_open(self) -> bool:
        return self.state == CircuitState.OPEN

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold:
            self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state != self.state:
            self.state = state
            self.opened_at = time.monotonic() if state == CircuitState.OPEN else None
            log.warning("circuit %s", state)
            if self.on_change:
                self.on_change(state)


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    is_retryable: Callable[[BaseException], bool],
    breaker: CircuitBreaker,
    ready: Callable[[], Awaitable[bool]],
    backoff: Backoff = Backoff(),
    probe_interval_s: float = 1.0,
) -> T:
    """Run ``call`` until it succeeds or fails with a non-retryable error.

    While the breaker is open, ``ready`` (Triton's ``/v2/health/ready``) is polled
    every ``probe_interval_s`` before the next attempt.
    """
    attempt = 0
    while True:
        try:
            result = await call()
        except Exception as exc:
            # "Invalid request" only counts while the model is ready: a Triton that is unloading
            # its models on shutdown answers NOT_FOUND, and that must be waited out too.
            if not is_retryable(exc) and await _safe(ready):
                raise
            breaker.record_failure()
            log.warning("retryable inference failure (attempt %d): %s", attempt + 1, exc)
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1
            while breaker.is_open and not await _safe(ready):
                await asyncio.sleep(probe_interval_s)
            continue
        breaker.record_success()
        return result


async def _safe(probe: Callable[[], Awaitable[bool]]) -> bool:
    try:
        return await probe()
    except Exception:
        return False
