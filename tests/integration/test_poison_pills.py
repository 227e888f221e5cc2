"""Issue 9, defect 0 for the consumers of ``feedback``: one 3 MB feedback event (its ``user_id`` over
the length limit) used to kill the feedback batch engine, and the learner, with MSG_SIZE_TOO_LARGE while
dead-lettering it, again on every restart at the same offset. Now it becomes a dead letter cut to
fit the topic, and everything after it is counted and learned.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest

from services.feedback.loadgen import OffsetRecorder, engine_args, start_worker, synthetic_feedback, wait_caught_up
from services.feedback.migrations import MIGRATIONS
from services.learner.checkpoint import PostgresCheckpoints
from shared.db import apply_migrations
from shared.devstack.process import ManagedProcess
from shared.events import DeadLetter, decode, encode
from shared.settings import Settings
from tests.integration.test_learner_support import checkpoint_with, learner_env, wait_for
from tests.integration.test_tagger_faults import TopicTail

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


@pytest.mark.parametrize("engine", ["batch", "faust"])
def test_a_3mb_feedback_event_is_dead_lettered_and_the_services_go_on(
    settings: Settings, engine: str, tmp_path: Path
) -> None:
    ns = uuid.uuid4().hex[:8]
    apply_migrations(settings, MIGRATIONS)
    events = list(synthetic_feedback(ns, 200, n_users=20, n_listings=20))
    poison = orjson.loads(encode(events[0])) | {"event_id": f"{ns}-poison", "user_id": "u" * 3 * MB}
    rec = OffsetRecorder(settings.kafka, **{"message.max.bytes": 16 * MB})
    for i, event in enumerate(events):
        if i == 50:
            rec.send(settings.topics.feedback, b"poison", orjson.dumps(poison))
        rec.send(settings.topics.feedback, event.user_id.encode(), encode(event))
    targets = rec.flush()

    group = f"fb-poison-{ns}"
    learner_name = f"poison-{ns}"
    checkpoints = PostgresCheckpoints(settings.database_url, learner_name)
    checkpoints.migrate()
    worker = start_worker(settings, group, group, *engine_args(engine))
    learner = ManagedProcess(f"learner-{learner_name}", tmp_path)
    learner.start([sys.executable, "-m", "services.learner.main"],
                  env=learner_env(settings, learner_name, tmp_path), cwd=REPO_ROOT)
    dead = TopicTail(settings, settings.topics.dead_letter)
    try:
        assert wait_caught_up(settings.database_url, group, targets, timeout_s=120, worker=worker), (
            f"the {engine} worker did not get past the 3 MB event"
        )
        wait_for(checkpoint_with(checkpoints, 200), 120, "the learner to learn all 200 good events")
        dead.wait(lambda ms: len(ms) >= 2, 60, "two dead letters (feedback, learner)")
        letters_raw = dead.settle(1.0)
        assert worker.running() and learner.running()
    finally:
        dead.close()
        worker.stop(timeout_s=20)
        learner.stop(timeout_s=20)

    letters = [decode(DeadLetter, m.value()) for m in letters_raw]
    assert sorted(d.service for d in letters) == ["feedback", "learner"]
    for d, m in zip(letters, letters_raw, strict=True):
        assert d.original_truncated and d.original_size == len(orjson.dumps(poison))
        assert "user_id" in d.reason and len(m.value()) <= settings.kafka.max_record_bytes
    with psycopg.connect(settings.database_url) as conn:
        counted = conn.execute("SELECT count(*) FROM feedback_events WHERE event_id LIKE %s", (f"{ns}-%",)).fetchone()
    assert counted == (200,)
