from __future__ import annotations

import asyncio

import pytest

from services.tagger.resilience import Backoff, CircuitBreaker, CircuitState, call_with_retry


class Unavailable(Exception):
    pass


def test_backoff_grows_and_caps() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0, jitter=False)
    assert [b.delay(i) for i in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


def test_breaker_opens_after_threshold_and_closes_on_success() -> None:
    states: list[CircuitState] = []
    br = CircuitBreaker(failure_threshold=2, on_change=states.append)
    br.record_failure()
    assert not br.is_open
    br.record_failure()
    assert br.is_open
    br.record_success()
    assert states == [CircuitState.OPEN, CircuitState.CLOSED]


def test_retry_waits_for_ready_then_succeeds() -> None:
    calls = {"n": 0, "probes": 0}

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise Unavailable("down")
        return "ok"

    async def ready() -> bool:
        calls["probes"] += 1
        return calls["probes"] > 2

    br = CircuitBreaker(failure_threshold=2)
    result = asyncio.run(call_with_retry(flaky, is_retryable=lambda e: isinstance(e, Unavailable), breaker=br,
                                         ready=ready, backoff=Backoff(0.001, 0.002), probe_interval_s=0.001))
    assert result == "ok" and calls["n"] == 4 and calls["probes"] >= 3
    assert not br.is_open


def test_non_retryable_error_is_raised_at_once() -> None:
    calls = {"n": 0}

    async def bad() -> str:
        calls["n"] += 1
        raise ValueError("invalid input")

    async def ready() -> bool:
        return True

    with pytest.raises(ValueError):
        asyncio.run(call_with_retry(bad, is_retryable=lambda e: isinstance(e, Unavailable),
                                    breaker=CircuitBreaker(), ready=ready))
    assert calls["n"] == 1


def test_invalid_request_while_triton_not_ready_is_waited_out() -> None:
    """A Triton unloading its models answers NOT_FOUND-style errors: not the listing's fault."""
    calls = {"n": 0}

    async def unloading_then_back() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("model has no available versions")
        return "ok"

    async def not_ready() -> bool:
        return False

    result = asyncio.run(call_with_retry(unloading_then_back, is_retryable=lambda e: False,
                                         breaker=CircuitBreaker(), ready=not_ready, backoff=Backoff(0.001, 0.002)))
    assert result == "ok" and calls["n"] == 2

