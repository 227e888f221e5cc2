"""The learner loop on the real broker and Postgres: checkpoints, offsets, dead letters, user-affinity."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from services.learner.checkpoint import Checkpoint, PostgresCheckpoints
from services.learner.main import new_model, run
from services.learner.settings import LearnerSettings
from shared.events import DeadLetter, FeedbackType, UserAffinity, decode, encode
from shared.settings import Settings
from tests.integration.test_learner_support import (
    checkpoint_with,
    feedback,
    produce,
    produce_feedback,
    produce_tags,
    read_all,
    tag_event,
    wait_for,
)

pytestmark = pytest.mark.integration

LISTINGS = {"l1": ["shoes", "red"], "l2": ["pots"], "l3": ["lamps", "red"]}


@pytest.fixture
def learner_settings(request: pytest.FixtureRequest) -> LearnerSettings:
    return LearnerSettings(
        name=f"t-{request.node.name[:30]}-{uuid.uuid4().hex[:6]}",
        checkpoint_every=50,
        checkpoint_interval_s=0.5,
        publish_min_interval_s=0.0,
        publish_max_per_s=1000,
    )


class Learner:
    """``run()`` in a thread, stopped (with its final checkpoint) at the end."""

    def __init__(self, settings: Settings, ls: LearnerSettings):
        self.stop = threading.Event()
        self.result: list[Checkpoint] = []
        self.thread = threading.Thread(target=lambda: self.result.append(run(settings, ls, self.stop)), daemon=True)
        self.thread.start()

    def close(self) -> Checkpoint:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def repo(settings: Settings, learner_settings: LearnerSettings) -> Iterator[PostgresCheckpoints]:
    repo = PostgresCheckpoints(settings.database_url, learner_settings.name, keep=2)
    repo.migrate()
    yield repo


def test_checkpoint_round_trip_keeps_offsets_and_only_the_newest(repo: PostgresCheckpoints) -> None:
    model = new_model(LearnerSettings())
    model.set_listing_tags("l1", [("shoes", 1.0)])
    model.learn(feedback(1, "u", "l1"))
    ids = [repo.save(Checkpoint(model=model, offsets={"feedback": {0: 10 + i, 3: 7}})) for i in range(3)]
    latest = repo.latest()
    assert latest is not None and latest.id == ids[-1] == repo.latest_id()
    assert latest.offsets == {"feedback": {0: 12, 3: 7}}
    assert latest.model.stats() == model.stats()
    assert latest.model.score("u", "shoes") == model.score("u", "shoes")
    with __import__("shared.db", fromlist=["connect"]).connect(repo.database_url) as conn:
        n = conn.execute("SELECT count(*) FROM learner_checkpoints WHERE learner = %s", (repo.learner,)).fetchone()
    assert n is not None and n[0] == 2


def test_learns_each_event_once_across_restart_and_dead_letters_bad_input(
    settings: Settings, learner_settings: LearnerSettings, repo: PostgresCheckpoints
) -> None:
    produce_tags(settings, LISTINGS)
    users = [f"u{i}" for i in range(10)]
    events = [feedback(i, users[i % 10], f"l{1 + i % 3}", FeedbackType.PURCHASE) for i in range(300)]
    produce_feedback(settings, events)
    # Duplicates (producer retries upstream) and garbage on the same topic.
    produce_feedback(settings, events[:40])
    produce(
        settings,
        settings.topics.feedback,
        [(b"u0", b"not json"), (b"u1", b'{"event_id": "x"}'), (b"u2", None)],
    )

    learner = Learner(settings, learner_settings)
    wait_for(checkpoint_with(repo, 300), 60, "checkpoint with all 300 events")
    first = learner.close()
    c = first.model.counters
    assert c.events_seen == 300 and c.duplicates == 40
    expected_positives = sum(len(LISTINGS[e.listing_id]) for e in events)
    assert c.positives == expected_positives
    assert sum(first.offsets[settings.topics.feedback].values()) == 300 + 40 + 3

    letters = [decode(DeadLetter, v) for _, v in read_all(settings, settings.topics.dead_letter, 3)]
    assert {(d.partition, d.offset) for d in letters} and len({(d.partition, d.offset) for d in letters}) == 3
    assert all(d.service == "learner" and d.reason for d in letters)

    # More events while the learner is down; a restart resumes from the checkpoint's offsets.
    more = [feedback(1000 + i, "u-new", "l2") for i in range(25)]
    produce_feedback(settings, more)
    learner = Learner(settings, learner_settings)
    wait_for(checkpoint_with(repo, 325), 60, "checkpoint with 325 events")
    second = learner.close()
    assert second.model.counters.events_seen == 325
    assert second.model.counters.duplicates == 40
    assert second.model.counters.positives == expected_positives + 25
    assert second.model.score("u-new", "pots") > second.model.score("stranger", "pots")


@pytest.mark.parametrize("fork", [True, False], ids=["fork-snapshot", "pickle-in-loop"])
def test_publishes_changed_top_k_to_user_affinity(
    settings: Settings, learner_settings: LearnerSettings, repo: PostgresCheckpoints, fork: bool
) -> None:
    learner_settings = learner_settings.model_copy(update={"fork_checkpoints": fork})
    produce_tags(settings, LISTINGS)
    produce_feedback(settings, [feedback(i, f"buyer{i % 4}", "l1", FeedbackType.ADD_TO_CART) for i in range(40)])
    learner = Learner(settings, learner_settings)
    wait_for(checkpoint_with(repo, 40), 60, "all events learned")
    records = read_all(settings, settings.topics.user_affinity, 4)
    learner.close()
    latest = {k: decode(UserAffinity, v) for k, v in records}
    assert set(latest) == {f"buyer{i}".encode() for i in range(4)}
    for affinity in latest.values():
        assert {t for t, _ in affinity.top_tags[:2]} == {"shoes", "red"}
        assert affinity.model_name == "river-lr" and affinity.events_seen > 0


def test_tag_tombstone_and_unknown_listing(
    settings: Settings, learner_settings: LearnerSettings, repo: PostgresCheckpoints
) -> None:
    produce_feedback(settings, [feedback(1, "early", "l9", FeedbackType.CLICK)])  # tags not known yet
    learner = Learner(settings, learner_settings)
    wait_for(checkpoint_with(repo, 1), 60, "event seen")
    produce(
        settings,
        settings.topics.tags,
        [
            (
                b"l9",
                encode(tag_event("l9", ["garden"])),
            )
        ],
    )
    def learned() -> Checkpoint | None:
        cp = repo.latest()
        return cp if cp is not None and cp.model.counters.positives == 1 else None

    cp = wait_for(learned, 60, "waiting event learned")
    assert "garden" in cp.model.tags
    produce(settings, settings.topics.tags, [(b"l9", None)])
    wait_for(lambda: (c := repo.latest()) and "l9" not in c.model.listing_tags, 60, "tombstone applied")
    learner.close()
