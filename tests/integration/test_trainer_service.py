"""The trainer service on the real Postgres, without Triton (the registry alone): a job from a trigger
to a gate decision, and recovery after a trainer died mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from services.feedback.cli import all_migrations
from services.trainer import jobs
from services.trainer.job_input import records_from_catalog
from services.trainer.service import TrainerData, TrainerService
from services.trainer.train import prepare
from services.trainer.triggers import Trigger, TriggerKind
from shared import model_registry
from shared.db import apply_migrations
from shared.model_registry import ModelRegistry, ModelStatus
from shared.settings import Settings
from tests.integration.tag_versions import (  # noqa: F401  (quick_v1 is a fixture)
    copy_version,
    quick_v1,
    tiny_config,
    unique_model_name,
)

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]

# Starts a job for a candidate, says its id, and sleeps holding it (until killed).
_HOLDER = """
import sys, time
from services.trainer.jobs import start_job, update_job
with start_job(sys.argv[1], "fast", "volume", "killed in a test", model_name=sys.argv[2]) as job:
    update_job(job, candidate_version=int(sys.argv[3]))
    print(job.id, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def service(quick_v1: Path, data_dir: Path, database_url: str, tmp_path: Path) -> TrainerService:  # noqa: F811
    apply_migrations(database_url, [*all_migrations(), *model_registry.MIGRATIONS])
    model, repo = unique_model_name(), tmp_path / "repo"
    copy_version(quick_v1, repo, model)
    registry = ModelRegistry(database_url)
    registry.register(model, 1, status=ModelStatus.CHAMPION, reason="test champion")
    prep = prepare(tiny_config(data_dir))
    data = TrainerData(
        original=records_from_catalog([prep.records[i] for i in prep.split.train + prep.split.val]),
        golden=records_from_catalog([prep.records[i] for i in prep.split.test]),
        texts={r.id: r.text for r in prep.records},
    )
    settings = Settings(database_url=database_url, state_dir=tmp_path, data_dir=data_dir,
                        triton_model_repository=repo, triton={"tag_model": model})
    return TrainerService(settings, data)


def test_a_job_records_trigger_candidate_and_every_gate_reason(service: TrainerService) -> None:
    assert service.tick().action == "idle"  # no feedback at all: no trigger fires
    result = service.tick(force=Trigger(TriggerKind.VOLUME, "forced by the test", {"weighted_labels": 0.0}))
    assert result.action == "job" and result.candidate == 2 and result.decision is not None
    # No feedback means no recent holdout: a candidate must not be blessed on golden scores alone.
    assert not result.decision.blessed and any("recent" in r and r.startswith("FAIL") for r in result.decision.reasons)
    assert service.registry.get(service.model, 2).status == ModelStatus.REJECTED  # type: ignore[union-attr]
    assert service.registry.champion(service.model).version == 1  # type: ignore[union-attr]  # serving untouched
    record = jobs.get_job(service.settings, result.job.id)  # type: ignore[union-attr]
    assert record is not None and record.status == "rejected" and record.candidate_version == 2
    assert record.trigger_kind == "volume" and record.gate_decision and record.dataset_fingerprint
    assert record.composition and record.composition["original_records"] == len(service.data.original)


def test_a_trainer_killed_mid_job_leaves_serving_untouched_and_its_candidate_rejected(
    service: TrainerService, quick_v1: Path  # noqa: F811
) -> None:
    copy_version(quick_v1, service.repository, service.model)  # version 2, as a job would have exported it
    service.registry.register(service.model, 2, reason="exported by the job that dies")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, service.settings.database_url, service.model, "2"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        job_id = int(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 30
    while not (recovered := service.recover()) and time.monotonic() < deadline:
        time.sleep(0.2)  # the dead session's locks go once Postgres notices the closed connection
    assert [j.id for j in recovered] == [job_id]
    assert service.registry.get(service.model, 2).status == ModelStatus.REJECTED  # type: ignore[union-attr]
    assert service.registry.champion(service.model).version == 1  # type: ignore[union-attr]


def _sample(database_url: str, texts: list[str], at: datetime) -> None:
    with psycopg.connect(database_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO tagger_listing_samples (tagger_id, listing_id, text, sampled_at) VALUES (%s, %s, %s, %s)",
            [("test-tagger", f"l{i}", t, at) for i, t in enumerate(texts)])


def _drift_snapshot(service: TrainerService, reference: list[str], recent: list[str]) -> list[Trigger]:
    from services.trainer.triggers import evaluate_triggers

    now = datetime.now(UTC)
    with psycopg.connect(service.settings.database_url) as conn:
        conn.execute("DELETE FROM tagger_listing_samples")
    _sample(service.settings.database_url, reference, now - timedelta(hours=48))
    _sample(service.settings.database_url, recent, now - timedelta(hours=1))
    snapshot = service.snapshot()
    assert snapshot.reference_embeddings is not None and snapshot.recent_embeddings is not None
    return [t for t in evaluate_triggers(snapshot, service.settings.trainer) if t.kind == TriggerKind.EMBEDDING_DRIFT]


@pytest.mark.slow  # embeds four windows of listings with the version's encoder
def test_embedding_drift_fires_on_what_taggers_sampled(service: TrainerService, data_dir: Path) -> None:
    """Listings of another kind in the recent window fire the MMD trigger; the same kind does not."""
    from collections import defaultdict

    trainer = service.settings.trainer.model_copy(update={
        "mmd_min_samples": 40, "mmd_sample_size": 60, "mmd_permutations": 200, "volume_weighted_labels": 1e9,
        "cooldown_h": 0.0,  # other tests of this database ran jobs moments ago: no cooldown here
        "schedule_interval_h": 1e6})
    service.settings = service.settings.model_copy(update={"trainer": trainer})
    by_top: dict[str, list[str]] = defaultdict(list)
    for record in prepare(tiny_config(data_dir)).records:
        by_top[record.labels[0]].append(record.text)
    big, other = sorted(by_top.values(), key=len, reverse=True)[:2]
    assert len(big) >= 100 and len(other) >= 50, "the tiny catalog's two largest categories"
    assert _drift_snapshot(service, big[:50], big[50:100]) == []
    fired = _drift_snapshot(service, big[:50], other[:50])
    assert len(fired) == 1 and fired[0].figures["p_value"] < trainer.mmd_p_value


@pytest.mark.slow
def test_a_deep_job_when_configured_fine_tunes_and_goes_through_the_same_gate(service: TrainerService) -> None:
    trainer = service.settings.trainer.model_copy(update={"job_kind": "deep", "deep_max_steps": 2,
                                                          "deep_batch_size": 8})
    service.settings = service.settings.model_copy(update={"trainer": trainer})
    result = service.tick(force=Trigger(TriggerKind.VOLUME, "forced by the test", {"weighted_labels": 0.0}))
    assert result.action == "job" and result.decision is not None and result.job is not None
    record = jobs.get_job(service.settings, result.job.id)
    assert record is not None and record.kind == "deep" and record.metrics and "deep_job" in record.metrics
    assert record.metrics["deep_job"]["job"]["kind"] == "deep" and record.metrics["deep_job"]["job"]["steps"] == 2
    assert service.registry.champion(service.model).version == 1  # type: ignore[union-attr]  # serving untouched
