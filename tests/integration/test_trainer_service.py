"""The trainer service on the real Postgres, without Triton (the registry alone): a job from a trigger
to a gate decision, and recovery after a trainer died mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
