"""Postgres schema of the learner: its checkpoints (applied with :func:`shared.db.apply_migrations`)."""

from __future__ import annotations

from shared.db import Migration

SERVICE = "learner"

MIGRATIONS: list[Migration] = [
    Migration(
        SERVICE,
        1,
        "create_learner_checkpoints",
        """
        CREATE TABLE learner_checkpoints (
            id           bigserial   PRIMARY KEY,
            learner      text        NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            model_name   text        NOT NULL,
            events_seen  bigint      NOT NULL,
            -- Next offset to read per topic and partition: {"feedback": {"0": 42, ...}, ...}
            offsets      jsonb       NOT NULL,
            stats        jsonb       NOT NULL DEFAULT '{}'::jsonb,
            state        bytea       NOT NULL
        );
        CREATE INDEX learner_checkpoints_latest ON learner_checkpoints (learner, id DESC);
        """,
    ),
]
