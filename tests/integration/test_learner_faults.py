"""Fault test: kill -9 the learner process mid-stream; after a restart every event was learned once."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from services.learner.checkpoint import PostgresCheckpoints
from shared.devstack.process import ManagedProcess
from shared.events import FeedbackType
from shared.settings import Settings
from tests.integration.test_learner_support import (
    checkpoint_with,
    feedback,
    learner_env,
    produce,
    produce_feedback,
    produce_tags,
    wait_for,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTINGS = {f"l{i}": [f"tag{i % 7}", f"tag{i % 5 + 10}"] for i in range(50)}
KINDS = [FeedbackType.CLICK, FeedbackType.IMPRESSION, FeedbackType.PURCHASE, FeedbackType.ADD_TO_CART]


def test_kill_9_mid_stream_then_restart_learns_each_event_once(settings: Settings, tmp_path: Path) -> None:
    name = f"kill9-{uuid.uuid4().hex[:6]}"
    repo = PostgresCheckpoints(settings.database_url, name)
    repo.migrate()
    produce_tags(settings, LISTINGS)
    events = [feedback(i, f"user{i % 97}", f"l{i % 50}", KINDS[i % 4]) for i in range(20_000)]
    produce_feedback(settings, events)
    produce_feedback(settings, events[::100])  # 200 duplicates
    produce(settings, settings.topics.feedback, [(b"user1", b"{broken")])

    proc = ManagedProcess(f"learner-{name}", tmp_path)
    argv = [sys.executable, "-m", "services.learner.main"]
    env = learner_env(settings, name, tmp_path)
    proc.start(argv, env=env, cwd=REPO_ROOT)
    try:
        killed_at = wait_for(checkpoint_with(repo, 2000), 90, "a checkpoint mid-stream", interval_s=0.05)
        proc.kill()
        assert not proc.running()
        before_restart = repo.latest()
        assert before_restart is not None and before_restart.model.counters.events_seen < 20_000, (
            "the kill did not land mid-stream"
        )
        assert before_restart.id is not None and killed_at.id is not None

        more = [feedback(20_000 + i, f"user{i % 97}", f"l{i % 50}", KINDS[i % 4]) for i in range(2_000)]
        produce_feedback(settings, more)
        proc.start(argv, env=env, cwd=REPO_ROOT)
        wait_for(checkpoint_with(repo, 22_000), 90, "checkpoint with all 22,000 events")
        assert proc.stop(timeout_s=30)  # SIGTERM: writes a final checkpoint
    finally:
        proc.stop()

    final = repo.latest()
    assert final is not None
    c = final.model.counters
    every = events + more
    assert c.events_seen == 22_000
    assert c.duplicates == 200
    engaged = [e for e in every if e.type != FeedbackType.IMPRESSION]
    assert c.positives == sum(len(LISTINGS[e.listing_id]) for e in engaged)
    assert sum(final.offsets[settings.topics.feedback].values()) == 22_000 + 200 + 1
