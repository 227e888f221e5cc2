"""The trainer loop's metrics on the real Postgres, scraped over HTTP as Prometheus would.

A canary waits, then the taggers report errors and it is rolled back, then a forced job fails
(the champion's version directory holds no model to train from): each shows on ``/metrics`` and
``/readyz`` exactly as ``tagloop trainer run`` serves them (the same :class:`ObservedTicks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.feedback.cli import all_migrations
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import TrainerData, TrainerService
from services.trainer.service_cli import ObservedTicks
from services.trainer.triggers import Trigger, TriggerKind
from shared import model_registry
from shared.db import apply_migrations
from shared.model_registry import ModelRegistry, ModelStatus
from shared.ops_http import OpsServer
from shared.settings import Settings
from tests.integration.tag_versions import unique_model_name

pytestmark = pytest.mark.integration


def samples(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample on ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> TrainerService:
    apply_migrations(database_url, [*all_migrations(), *model_registry.MIGRATIONS])
    model = unique_model_name()
    registry = ModelRegistry(database_url)
    registry.register(model, 1, status=ModelStatus.CHAMPION, reason="test champion")
    registry.register(model, 2, reason="test candidate")
    registry.set_status(model, 2, ModelStatus.CANARY, reason="test canary", metrics_update={"canary_share": 0.25})
    repository = tmp_path / "repo"
    (repository / model / "1").mkdir(parents=True)  # the champion's directory, empty: a job fails on it
    settings = Settings(database_url=database_url, state_dir=tmp_path, triton_model_repository=repository,
                        triton={"tag_model": model})
    # Canary judging and triggers read Postgres only; no catalog is needed until a job trains.
    return TrainerService(settings, TrainerData([], [], {}))


@pytest.fixture
def observed(service: TrainerService) -> Iterator[tuple[ObservedTicks, OpsServer]]:
    metrics = TrainerMetrics()
    with OpsServer(metrics.registry, "127.0.0.1", 0, ready=metrics.ready) as server:
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 503  # before recovery
        metrics.observe_recovery(service.recover())
        yield ObservedTicks(service, metrics), server


def test_canary_rollback_and_failed_job_show_on_metrics_and_readyz(
    service: TrainerService, observed: tuple[ObservedTicks, OpsServer]
) -> None:
    ticks, server = observed
    assert ticks.tick() is not None
    m = samples(server.url)
    assert m['tagloop_trainer_ticks_total{action="canary-wait"}'] == 1.0
    assert (m["tagloop_trainer_champion_version"], m["tagloop_trainer_canary_version"]) == (1.0, 2.0)
    assert m["tagloop_trainer_canary_share"] == 0.25
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200

    with psycopg.connect(service.settings.database_url, autocommit=True) as conn:  # what taggers report
        conn.execute("INSERT INTO tagger_arm_stats (tagger_id, model_name, version, requests, errors, p99_seconds)"
                     " VALUES ('t1', %s, '2', 300, 60, 0.05)", (service.model,))
    result = ticks.tick()
    assert result is not None and result.action == "rolled-back"
    m = samples(server.url)
    assert m["tagloop_trainer_rollbacks_total"] == 1.0
    assert (m["tagloop_trainer_canary_version"], m["tagloop_trainer_canary_share"]) == (0.0, 0.0)

    # The champion's directory holds no model: the job fails after it started.
    assert ticks.tick(force=Trigger(TriggerKind.VOLUME, "forced by the test", {})) is None
    m = samples(server.url)
    assert m['tagloop_trainer_jobs_total{status="failed"}'] == 1.0
    assert m["tagloop_trainer_tick_failures_total"] == 1.0
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.text.startswith("not ok: last tick failed: ")

    result = ticks.tick()  # nothing fires (no feedback): the loop is healthy again
    assert result is not None and result.action == "idle"
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    m = samples(server.url)
    assert m['tagloop_trainer_jobs_total{status="failed"}'] == 1.0  # counted once, not on every later tick
    assert m["tagloop_trainer_tick_seconds_count"] == 4.0
