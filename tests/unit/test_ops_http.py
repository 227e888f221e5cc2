"""shared/ops_http.py over real sockets, and the trainer's metrics as Prometheus scrapes them."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from services.trainer.gate import Check, Decision
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import TickResult
from shared.ops_http import OpsServer
from shared.settings import Settings


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as Prometheus parses it: (name, sorted labels) -> value."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


@pytest.fixture
def checks() -> dict[str, tuple[bool, str]]:
    return {"healthy": (True, ""), "ready": (False, "no partitions assigned")}


@pytest.fixture
def server(checks: dict[str, tuple[bool, str]]) -> Iterator[OpsServer]:
    registry = CollectorRegistry()
    Counter("demo_events", "Events", ["kind"], registry=registry).labels("a").inc(2)
    with OpsServer(registry, "127.0.0.1", 0, healthy=lambda: checks["healthy"], ready=lambda: checks["ready"]) as s:
        yield s


@pytest.fixture
def broken() -> Iterator[OpsServer]:
    def check() -> tuple[bool, str]:
        raise RuntimeError("secret\ntraceback")

    with OpsServer(CollectorRegistry(), "127.0.0.1", 0, healthy=check, ready=check) as s:
        yield s


def test_metrics_health_and_readiness_answer_what_the_checks_say(
    server: OpsServer, checks: dict[str, tuple[bool, str]]
) -> None:
    assert scrape(server.url)[("demo_events_total", (("kind", "a"),))] == 2.0
    health = httpx.get(f"{server.url}/healthz", timeout=10)
    assert (health.status_code, health.text) == (200, "ok\n")
    ready = httpx.get(f"{server.url}/readyz?verbose=1", timeout=10)  # a query string changes nothing
    assert (ready.status_code, ready.text) == (503, "not ok: no partitions assigned\n")
    checks["ready"] = (True, "4 partitions")
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert (ready.status_code, ready.text) == (200, "ok: 4 partitions\n")
    assert httpx.get(f"{server.url}/metricsx", timeout=10).status_code == 404
    assert httpx.get(f"{server.url}/", timeout=10).status_code == 404


def test_a_check_that_raises_answers_503_with_one_line_and_no_message(broken: OpsServer) -> None:
    for path in ("/healthz", "/readyz"):
        answer = httpx.get(f"{broken.url}{path}", timeout=10)
        assert (answer.status_code, answer.text) == (503, "not ok: check failed: RuntimeError\n")
    assert httpx.get(f"{broken.url}/metrics", timeout=10).status_code == 200  # the server lives on


def test_stop_releases_the_port() -> None:
    server = OpsServer(CollectorRegistry(), "127.0.0.1", 0).start()
    port = server.port
    server.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # would raise EADDRINUSE if the server still held it


def test_the_bind_address_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().ops.host == "127.0.0.1"  # loopback unless deployed
    monkeypatch.setenv("TAGLOOP_OPS__HOST", "0.0.0.0")
    monkeypatch.setenv("TAGLOOP_OPS__TRAINER_PORT", "9102")
    settings = Settings()
    assert (settings.ops.host, settings.ops.trainer_port) == ("0.0.0.0", 9102)
    with OpsServer(CollectorRegistry(), settings.ops.host, 0) as server:
        assert server.url.startswith("http://127.0.0.1:")  # reachable on loopback when bound to all
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def _decision(blessed: bool) -> Decision:
    return Decision(blessed, (Check("golden_micro_f1", "pass" if blessed else "fail", "0.61 vs 0.60", {}),))


def test_trainer_metrics_scraped_over_http() -> None:
    metrics = TrainerMetrics()
    with OpsServer(metrics.registry, "127.0.0.1", 0, ready=metrics.ready) as server:
        before = scrape(server.url)
        assert before[("tagloop_trainer_jobs_total", (("status", "failed"),))] == 0.0  # exported before any job
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 503  # not recovered yet

        metrics.observe_recovery([])
        metrics.observe_tick(TickResult("job", decision=_decision(False), candidate=3), seconds=42.0, now=1.7e9)
        metrics.observe_tick(TickResult("job", decision=_decision(True), candidate=4), seconds=40.0, now=1.7e9 + 30)
        metrics.observe_serving(champion=2, canary=4, canary_share=0.1)
        metrics.observe_tick(TickResult("rolled-back", candidate=4), seconds=0.1, now=1.7e9 + 60)
        metrics.observe_serving(champion=2, canary=None, canary_share=0.1)
        metrics.observe_tick(TickResult("promoted", candidate=5), seconds=0.1, now=1.7e9 + 90)
        after = scrape(server.url)
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200

    assert after[("tagloop_trainer_gate_decisions_total", (("outcome", "blessed"),))] == 1.0
    assert after[("tagloop_trainer_gate_decisions_total", (("outcome", "rejected"),))] == 1.0
    assert after[("tagloop_trainer_ticks_total", (("action", "job"),))] == 2.0
    assert after[("tagloop_trainer_rollbacks_total", ())] == 1.0
    assert after[("tagloop_trainer_promotions_total", ())] == 1.0
    assert after[("tagloop_trainer_champion_version", ())] == 2.0
    assert after[("tagloop_trainer_canary_version", ())] == 0.0
    assert after[("tagloop_trainer_canary_share", ())] == 0.0  # no canary, no share
    assert after[("tagloop_trainer_last_tick_timestamp_seconds", ())] == 1.7e9 + 90
    assert after[("tagloop_trainer_tick_seconds_count", ())] == 4.0
    assert after[("tagloop_trainer_tick_seconds_sum", ())] == pytest.approx(82.2)
