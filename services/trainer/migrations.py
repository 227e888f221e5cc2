"""Schema of the trainer service (applied by :func:`shared.db.apply_migrations`, and by ``tagloop db migrate``).

Tables
------
trainer_jobs
    One row per training job: what triggered it (kind, reason, the figures that fired), the
    dataset it trained on (fingerprint, composition), its status, the candidate version it
    exported, its metrics, the gate's decision (blessed and every reason), timings, the error
    of a failed job, and which process ran it. Only :mod:`services.trainer.jobs` writes it;
    one job runs at a time (an advisory lock held by the job's connection).
"""

from __future__ import annotations

from shared.db import Migration

SERVICE = "trainer"

JOB_KINDS = ("fast", "deep")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "rejected")
FINISHED_STATUSES = ("succeeded", "failed", "rejected")


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_V1 = f"""
CREATE TABLE trainer_jobs (
    id                  integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                text        NOT NULL CHECK (kind IN ({_quoted(JOB_KINDS)})),
    status              text        NOT NULL CHECK (status IN ({_quoted(JOB_STATUSES)})),
    trigger_kind        text        NOT NULL,
    trigger_reason      text        NOT NULL DEFAULT '',
    trigger_figures     jsonb       NOT NULL DEFAULT '{{}}',
    dataset_fingerprint text,
    composition         jsonb,
    model_name          text,
    candidate_version   integer     CHECK (candidate_version > 0),
    metrics             jsonb,
    gate_decision       jsonb,
    error               text,
    owner_pid           integer,
    owner_host          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    -- A finished job has its end time, an unfinished one none: "running" never hides an end.
    CONSTRAINT trainer_jobs_finished CHECK ((status IN ({_quoted(FINISHED_STATUSES)})) = (finished_at IS NOT NULL))
);
-- Recovery looks for unfinished jobs; there are at most a few.
CREATE INDEX trainer_jobs_unfinished ON trainer_jobs (id) WHERE status IN ('queued', 'running');
CREATE INDEX trainer_jobs_by_kind ON trainer_jobs (kind, id);
"""

MIGRATIONS: list[Migration] = [
    Migration(SERVICE, 1, "create_trainer_jobs", _V1),
]
