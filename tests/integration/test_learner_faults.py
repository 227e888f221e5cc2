"""Fault tests of the learner: kill -9 mid-stream, dead letters the broker refuses.

* kill -9 of the learner process mid-stream: after a restart every event was learned once.
* Its dead letters cannot be delivered: it keeps learning, says degraded, retries them,
  and never stores a checkpoint past an original whose letter was not delivered.

Postgres faults (sessions terminated, writes refused) are in ``test_faults_postgres.py``.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from services.learner.checkpoint import Checkpoint, PostgresCheckpoints
from services.learner.health import LearnerHealth
from services.learner.main import ModelLock, run
from services.learner.settings import LearnerSettings
from services.learner.writer import CheckpointError
from shared.devstack.process import ManagedProcess
from shared.events import FeedbackType
from shared.kafka import producer_config
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


def produce_one(settings: Settings, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
    """Produce one record; returns its (partition, offset)."""
    where: list[tuple[int, int]] = []
    producer = Producer(producer_config(settings.kafka))
    producer.produce(topic, key=key, value=value, on_delivery=lambda _, m: where.append((m.partition(), m.offset())))
    assert producer.flush(30) == 0 and where
    return where[0]


@pytest.mark.slow  # 25-60 s: keeps the default suite under 15 minutes
def test_never_checkpoints_past_an_undelivered_dead_letter(settings: Settings) -> None:
    # An invalid topic name: the broker refuses every dead letter (TOPIC_EXCEPTION), for real.
    s = settings.model_copy(update={"topics": settings.topics.model_copy(update={"dead_letter": "dead letters!"})})
    ls = LearnerSettings(name=f"dl-{uuid.uuid4().hex[:6]}", checkpoint_every=100, checkpoint_interval_s=0.3)
    repo = PostgresCheckpoints(s.database_url, ls.name)
    repo.migrate()
    produce_tags(s, LISTINGS)
    events = [feedback(i, f"user{i % 97}", f"l{i % 50}", KINDS[i % 4]) for i in range(1000)]
    produce_feedback(s, events[:500])

    shared, health, stop = ModelLock(), LearnerHealth(), threading.Event()
    outcome: list[BaseException | Checkpoint] = []

    def learner() -> None:
        try:
            outcome.append(run(s, ls, stop, shared, health=health))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=learner, daemon=True)
    thread.start()
    try:
        wait_for(checkpoint_with(repo, 500), 60, "the first 500 events checkpointed")
        partition, offset = produce_one(s, s.topics.feedback, b"user1", b"{broken")
        produce_feedback(s, events[500:])

        def learned() -> bool:
            with shared.lock:
                return shared.model is not None and shared.model.counters.events_seen == 1000

        wait_for(learned, 60, "the learner to go on learning")
        wait_for(lambda: health.status()[0] == "degraded", 30, "health to say degraded")
        time.sleep(3)  # ten checkpoint intervals: checkpoints are due, and must wait
        reasons = health.status()[1]
        held = repo.latest()
    finally:
        stop.set()
        thread.join(60)

    # The broker's answer, then the client's own once it knows the topic cannot exist.
    assert any("dead letters not delivered" in r and ("Invalid topic" in r or "Unknown topic" in r) for r in reasons), (
        reasons
    )
    assert (health.registry.get_sample_value("tagloop_learner_dead_letter_failures_total") or 0) >= 2  # retried
    # No checkpoint stores an offset past the original of the undelivered letter ...
    for cp in (held, repo.latest()):
        assert cp is not None and cp.offsets[s.topics.feedback].get(partition, 0) <= offset, cp.offsets
        assert cp.model.counters.events_seen == 500
    # ... not even the final one: the learner stops without it, and says why.
    assert len(outcome) == 1 and isinstance(outcome[0], CheckpointError), outcome
    assert "dead letters not delivered" in str(outcome[0])
