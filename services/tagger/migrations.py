"""Schema owned by the tagger: what each tagger process saw of each model version (the canary's
health), and a small sample of the listings it tagged (the trainer's embedding-drift input)."""

from __future__ import annotations

from shared.db import Migration

MIGRATIONS: list[Migration] = [
    Migration(
        "tagger",
        1,
        "create_tagger_arm_stats",
        """
        CREATE TABLE tagger_arm_stats (
            tagger_id   text        NOT NULL,
            model_name  text        NOT NULL,
            version     text        NOT NULL,
            requests    bigint      NOT NULL,
            errors      bigint      NOT NULL,
            p99_seconds double precision,
            updated_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tagger_id, model_name, version)
        );
        """,
    ),
    Migration(
        "tagger",
        2,
        "create_tagger_listing_samples",
        """
        CREATE TABLE tagger_listing_samples (
            tagger_id   text        NOT NULL,
            listing_id  text        NOT NULL,
            text        text        NOT NULL,
            sampled_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX tagger_listing_samples_at ON tagger_listing_samples (sampled_at);
        """,
    ),
]
