"""10,000 generated hostile messages among 10,000 good ones on each input topic, against the real services.

* ``feedback`` and ``listing-tags`` → both feedback engines (faust and batch, each on its own
  database) and the learner, side by side, each a real process in its own consumer group.
* ``listings`` → a real tagger on the real Triton.

Every good record is processed exactly once (counts equal an independent count of what was
produced; the learner learned each good event once; each listing has one tag event), every
bad one is dead-lettered exactly once per service, no service restarts, and peak RSS is
reported (and bounded). Figures go to ``<state_dir>/hostile-campaign-*.json`` and stdout.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Message

from services.feedback.loadgen import (
    OffsetRecorder,
    engine_args,
    start_worker,
    synthetic_feedback,
    synthetic_tags,
    wait_caught_up,
)
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import recount_mismatches
from services.learner.checkpoint import PostgresCheckpoints
from shared.db import apply_migrations
from shared.devstack import stack
from shared.devstack.process import ManagedProcess
from shared.events import DeadLetter, ListingEvent, decode, encode
from shared.settings import Settings
from tests.hostile import hostile_records
from tests.integration.test_feedback_faults import expected_listing_counts, stored_listing_counts
from tests.integration.test_learner_support import checkpoint_with, learner_env, wait_for
from tests.integration.test_tagger_faults import TaggerProcess, TopicTail, real_listings, tag_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 10_000
REPO_ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)


def peak_rss_mb(pid: int | None) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MiB."""
    assert pid is not None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def letters_by_service(messages: list[Message]) -> dict[str, list[DeadLetter]]:
    out: dict[str, list[DeadLetter]] = {}
    for m in messages:
        letter = decode(DeadLetter, m.value())
        out.setdefault(letter.service, []).append(letter)
    return out


def assert_each_bad_once(
    letters: list[DeadLetter], bad: Counter[tuple[str, bytes | None]], service: str, readers: int = 1
) -> None:
    """Each hostile record dead-lettered exactly once by each of ``readers`` consumers, with a reason."""
    where = Counter((d.topic, d.partition, d.offset) for d in letters)
    assert set(where.values()) == {readers}, f"{service}: a record was dead-lettered more or less than once"
    got = Counter((d.topic, d.original_key) for d in letters)
    assert got == Counter({k: n * readers for k, n in bad.items()}), f"{service}: dead letters ≠ hostile records"
    assert all(d.reason.strip() and d.error_class for d in letters)


def report(settings: Settings, name: str, figures: dict[str, object]) -> None:
    print(f"\nhostile campaign {name}: {json.dumps(figures)}")
    (Path(settings.state_dir) / f"hostile-campaign-{name}.json").write_text(json.dumps(figures, indent=2))


@pytest.mark.timeout(1500)
def test_feedback_and_learner_under_10k_hostile_among_10k_good_per_topic(
    settings: Settings, postgres_server_url: str, tmp_path: Path
) -> None:
    ns = uuid.uuid4().hex[:8]
    t = settings.topics
    second_db = f"tagloop_campaign_{ns}"
    batch_settings = settings.model_copy(update={"database_url": stack.ensure_database(postgres_server_url, second_db)})
    for s in (settings, batch_settings):
        apply_migrations(s, MIGRATIONS)

    tags = synthetic_tags(ns, N)
    events = list(synthetic_feedback(ns, N, n_users=500, n_listings=N))
    feedback_base = json.loads(encode(events[0]))
    tag_base = json.loads(encode(tags[0]))
    # On a compacted topic a null value is a tombstone, not bad input: none among the hostile tags.
    bad_tags = hostile_records(tag_base, "listing_id", N, seed=1, null_values=False)
    bad_feedback = hostile_records(feedback_base, "user_id", N, seed=2)
    rec = OffsetRecorder(settings.kafka, **{"message.max.bytes": 16 * 1024 * 1024})
    for good, (key, value, _) in zip(tags, bad_tags, strict=True):
        rec.send(t.tags, good.listing_id.encode(), encode(good))
        rec.send(t.tags, key, value)
    for good, (key, value, _) in zip(events, bad_feedback, strict=True):
        rec.send(t.feedback, good.user_id.encode(), encode(good))
        rec.send(t.feedback, key, value)
    targets = rec.flush()

    learner_name = f"campaign-{ns}"
    checkpoints = PostgresCheckpoints(settings.database_url, learner_name)
    checkpoints.migrate()
    faust = start_worker(settings, f"fb-faust-{ns}", f"fb-faust-{ns}", *engine_args("faust"))
    batch = start_worker(batch_settings, f"fb-batch-{ns}", f"fb-batch-{ns}", *engine_args("batch"))
    learner = ManagedProcess(f"learner-{ns}", tmp_path)
    learner.start([sys.executable, "-m", "services.learner.main"],
                  env=learner_env(settings, learner_name, tmp_path), cwd=REPO_ROOT)
    pids = {"faust": faust.pid(), "batch": batch.pid(), "learner": learner.pid()}
    dead = TopicTail(settings, t.dead_letter)
    try:
        assert wait_caught_up(settings.database_url, f"fb-faust-{ns}", targets, timeout_s=900, worker=faust)
        assert wait_caught_up(batch_settings.database_url, f"fb-batch-{ns}", targets, timeout_s=600, worker=batch)
        wait_for(checkpoint_with(checkpoints, N), 600, f"the learner to learn {N} events")
        dead.wait(lambda ms: len(ms) >= 5 * N, 300, f"{5 * N} dead letters")
        letters = letters_by_service(dead.settle(3.0))
        procs = {"faust": faust, "batch": batch, "learner": learner}
        for name, proc in procs.items():
            assert proc.running() and proc.pid() == pids[name], f"{name} restarted"
        rss = {name: round(peak_rss_mb(proc.pid()), 1) for name, proc in procs.items()}
    finally:
        dead.close()
        for proc in (faust, batch, learner):
            proc.stop(timeout_s=20)

    # Every good event counted exactly once, by both engines; the learner learned each once.
    want = expected_listing_counts(tags, events)
    for s in (settings, batch_settings):
        with psycopg.connect(s.database_url) as conn:
            archived = conn.execute(
                "SELECT count(*) FROM feedback_events WHERE event_id LIKE %s", (f"{ns}-%",)
            ).fetchone()
        assert archived == (N,)
        stored = stored_listing_counts(s.database_url, ns)
        assert {k: v for k, v in want.listing.items() if v[0]} == stored
        assert set(recount_mismatches(s.database_url).values()) <= {0}
    latest = checkpoints.latest()
    assert latest is not None and latest.model.counters.events_seen == N

    # Every hostile record dead-lettered exactly once by each service.
    bad = Counter([(t.tags, k) for k, _, _ in bad_tags] + [(t.feedback, k) for k, _, _ in bad_feedback])
    assert len(letters["feedback"]) == 4 * N  # two engines × two topics
    assert_each_bad_once(letters["feedback"], bad, "feedback", readers=2)
    assert_each_bad_once(letters["learner"], bad, "learner")
    too_big = [d for ds in letters.values() for d in ds if len(encode(d)) > settings.kafka.max_record_bytes]
    assert not too_big
    stack.drop_database(postgres_server_url, second_db)
    report(settings, "feedback-learner", {
        "good_per_topic": N, "hostile_per_topic": N, "topics": [t.tags, t.feedback],
        "dead_letters": {k: len(v) for k, v in letters.items()}, "duplicates": 0, "losses": 0,
        "truncated_dead_letters": sum(d.original_truncated for ds in letters.values() for d in ds),
        "peak_rss_mib": rss, "kinds": dict(Counter(w for _, _, w in bad_feedback)),
    })
    assert max(rss.values()) < 2048


@pytest.mark.timeout(2400)
def test_tagger_under_10k_hostile_among_10k_good_listings(
    stack_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    s = stack_settings
    good = real_listings(data_dir, N, offset=4000)
    base = json.loads(encode(ListingEvent(event_id="e", listing_id="l", op="created", title="Red shirt", ts=NOW)))
    bad = hostile_records(base, "listing_id", N, seed=3)
    rec = OffsetRecorder(s.kafka, **{"message.max.bytes": 16 * 1024 * 1024})
    for listing, (key, value, _) in zip(good, bad, strict=True):
        rec.send(s.topics.listings, listing.listing_id.encode(), encode(listing))
        rec.send(s.topics.listings, key, value)
    rec.flush()

    tagger = TaggerProcess("tagger-campaign", s, tmp_path, f"tagger-campaign-{uuid.uuid4().hex[:6]}", batch_size=64)
    tags, dead = TopicTail(s, s.topics.tags), TopicTail(s, s.topics.dead_letter)
    try:
        tagger.start()
        tagger.wait_ready(180)
        pid = tagger.pid()
        started = datetime.now(UTC)
        tags.wait(lambda ms: len(ms) >= N, 1800, f"{N} tag events")
        dead.wait(lambda ms: len(ms) >= N, 120, f"{N} dead letters")
        seconds = (datetime.now(UTC) - started).total_seconds()
        events, letters_raw = tag_events(tags.settle(3.0)), dead.settle(2.0)
        assert tagger.running() and tagger.pid() == pid, "the tagger restarted"
        rss = round(peak_rss_mb(pid), 1)
    finally:
        tagger.stop()
        tags.close()
        dead.close()

    assert Counter(e.listing_id for e in events) == Counter(x.listing_id for x in good)  # each exactly once
    letters = [decode(DeadLetter, m.value()) for m in letters_raw]
    assert_each_bad_once(letters, Counter((s.topics.listings, k) for k, _, _ in bad), "tagger")
    assert all(len(m.value()) <= s.kafka.max_record_bytes for m in letters_raw)
    report(s, "tagger", {
        "good": N, "hostile": N, "tag_events": len(events), "dead_letters": len(letters), "duplicates": 0,
        "losses": 0, "seconds": round(seconds, 1), "peak_rss_mib": rss,
    })
    assert rss < 2048
