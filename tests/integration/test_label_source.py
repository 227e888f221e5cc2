"""Labels from feedback against the real Postgres: written by the feedback store, read through its label function."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from services.feedback.domain import Consumed, TagUpdate
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import PostgresFeedbackStore, recount_mismatches
from services.trainer.feedback_labels import Label, LabelKind, fingerprint
from services.trainer.label_source import build_training_labels, read_feedback
from shared.canary import ListingSums
from shared.db import apply_migrations, async_pool
from shared.events import FeedbackEvent, FeedbackType, Tag, TagEvent, TagKind, TagSource
from shared.settings import Settings, TrainerSettings

pytestmark = pytest.mark.integration

# A day no other test writes feedback for: build_training_labels reads the whole window.
SINCE = datetime(2024, 2, 29, tzinfo=UTC)
UNTIL = SINCE + timedelta(days=1)
T10 = SINCE + timedelta(hours=10)


@pytest.fixture
def migrated(database_url: str) -> str:
    apply_migrations(database_url, MIGRATIONS)
    return database_url


def _tag_event(listing: str, confident: Sequence[str], exploratory: Sequence[str] = ()) -> TagEvent:
    def tag(tid: str, source: TagSource) -> Tag:
        return Tag(tag_id=tid, name=tid, kind=TagKind.CATEGORY, score=0.5, source=source)

    tags = [tag(t, TagSource.MODEL) for t in confident] + [tag(t, TagSource.EXPLORATORY) for t in exploratory]
    return TagEvent(listing_id=listing, tags=tags, model_name="tag_model", model_version="3", source_event_id="s")


class Feed:
    """Feedback events of one test, with unique ids."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.events: list[FeedbackEvent] = []

    def add(self, listing: str, type_: str, n: int = 1, ts: datetime = T10, **kw: Any) -> None:
        for _ in range(n):
            self.events.append(
                FeedbackEvent(
                    event_id=f"{self.ns}-{len(self.events)}", user_id=f"{self.ns}-u{len(self.events) % 3}",
                    listing_id=f"{self.ns}-{listing}", type=FeedbackType(type_), ts=ts, **kw,
                )
            )  # fmt: skip


def _write(url: str, ns: str, feed: Feed) -> None:
    async def go() -> None:
        pool = async_pool(url, max_size=2)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, f"g-{ns}")
            first = [
                TagUpdate.from_event(_tag_event(f"{ns}-A", ["t1"], ["t2"]), 0, 0),
                TagUpdate.from_event(_tag_event(f"{ns}-B", ["t1"]), 0, 1),
                TagUpdate.from_event(_tag_event(f"{ns}-D", ["t1"]), 0, 2),
                TagUpdate.from_event(_tag_event(f"{ns}-F", ["t1"]), 0, 3),
            ]
            await store.record_tags(first, "tags")
            batch = [Consumed(e, "feedback", 0, i) for i, e in enumerate(feed.events)]
            result = await store.record_feedback(batch)
            assert result.pending == 3  # C's clicks wait for its tags
            late = await store.record_tags([TagUpdate.from_event(_tag_event(f"{ns}-C", ["t3"]), 0, 4)], "tags")
            assert late.reattributed == 3
        finally:
            await pool.close()

    asyncio.run(go())


def _feedback(ns: str) -> Feed:
    f = Feed(ns)
    # A: tags t1 and t2 (exploratory); positions on some events, none on others.
    f.add("A", "impression", 3, position=1)
    f.add("A", "impression", 2, position=4)
    f.add("A", "impression")
    f.add("A", "click", position=4)
    f.add("A", "click")
    f.add("A", "add_to_cart")
    f.add("A", "tag_accept", tag_id="t1", ts=T10)
    f.add("A", "tag_reject", tag_id="t1", ts=T10 + timedelta(hours=1))  # the latest judgement wins
    f.add("A", "click", position=2, ts=UNTIL + timedelta(hours=5))  # after the window
    f.add("A", "purchase", price=10.0, ts=SINCE - timedelta(hours=1))  # before the window
    f.add("B", "impression", 25)  # no positions: 25 unclicked impressions, a weak negative
    f.add("C", "click", 3, position=1)  # tags arrive after the clicks
    f.add("D", "impression", 5)  # too little evidence
    f.add("F", "impression", 30, position=3)  # 30 shown, but only 10 examined: too little
    f.add("E", "tag_reject", tag_id="t9")  # a judged tag on a listing whose tags are unknown
    return f


def _rows(url: str, ns: str, since: datetime | None, until: datetime | None) -> dict[tuple[str, str], dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT * FROM feedback_tag_labels(%s, %s) WHERE listing_id LIKE %s", (since, until, f"{ns}-%")
        ).fetchall()
    return {(r["listing_id"].removeprefix(f"{ns}-"), r["tag_id"]): r for r in rows}


def test_label_function_figures_window_and_labels(migrated: str) -> None:
    url, ns = migrated, uuid.uuid4().hex[:8]
    _write(url, ns, _feedback(ns))

    rows = _rows(url, ns, SINCE, UNTIL)
    assert sorted(rows) == [("A", "t1"), ("A", "t2"), ("B", "t1"), ("C", "t3"), ("D", "t1"), ("E", "t9"), ("F", "t1")]
    figures = ("impressions", "clicks", "carts", "purchases", "accepts", "rejects")
    a1, a2 = rows["A", "t1"], rows["A", "t2"]
    assert tuple(a1[k] for k in figures) == (6, 2, 1, 0, 1, 1)
    assert tuple(a2[k] for k in figures) == (6, 2, 1, 0, 0, 0)  # the judgements were about t1 only
    assert a1["click_positions"] == a2["click_positions"] == {"4": 1}
    assert a1["impression_positions"] == {"1": 3, "4": 2}
    assert (a1["last_accept_at"], a1["last_reject_at"]) == (T10, T10 + timedelta(hours=1))
    assert (a1["exploratory"], a2["exploratory"], a1["model_version"]) == (False, True, "3")
    assert (a1["first_ts"], a1["last_ts"]) == (T10, T10 + timedelta(hours=1))
    assert rows["C", "t3"]["clicks"] == 3 and rows["C", "t3"]["click_positions"] == {"1": 3}
    assert rows["E", "t9"]["rejects"] == 1 and rows["E", "t9"]["model_version"] is None
    assert rows["F", "t1"]["impression_positions"] == {"3": 30}

    # Outside the window: the late click and the early purchase; the view is all time.
    everything = _rows(url, ns, None, None)
    assert (everything["A", "t1"]["clicks"], everything["A", "t1"]["purchases"]) == (3, 1)
    assert everything["A", "t1"]["click_positions"] == {"2": 1, "4": 1}
    with psycopg.connect(url) as conn:
        view = conn.execute(
            "SELECT clicks FROM feedback_tag_labels_v1 WHERE listing_id = %s AND tag_id = 't2'", (f"{ns}-A",)
        ).fetchone()
        # The one definition of counting: all time, the function equals the service's counters.
        counters = conn.execute(
            "SELECT listing_id, tag_id, impressions, clicks, carts, purchases, accepts, rejects"
            " FROM feedback_listing_tag_counts WHERE listing_id LIKE %s AND events > 0 AND tag_id <> '__pending__'",
            (f"{ns}-%",),
        ).fetchall()
        positions = conn.execute(
            "SELECT position, count(*) FROM feedback_events WHERE listing_id = %s AND type = 'impression'"
            " GROUP BY 1 ORDER BY 1 NULLS FIRST",
            (f"{ns}-A",),
        ).fetchall()
    assert view == (3,)
    recount = {(f"{ns}-{k[0]}", k[1], *(r[f] for f in figures)) for k, r in everything.items()}
    assert set(counters) == recount
    assert positions == [(None, 1), (1, 3), (4, 2)]
    assert set(recount_mismatches(url).values()) == {0}

    # The rows as the builder sees them, and the labels built from them.
    window = read_feedback(url, TrainerSettings(), SINCE, UNTIL)
    by_key = {(r.listing_id, r.tag_id): r for r in window.rows}
    assert by_key[f"{ns}-A", "t1"].examined_impressions == 3 * 1.0 + 2 * 0.25 + 1
    assert by_key[f"{ns}-B", "t1"].examined_impressions is None
    assert (window.first_ts, window.last_ts) == (T10, T10 + timedelta(hours=1))

    # Weights apart (the defaults weigh strong labels 1, weak 0.5).
    trainer = TrainerSettings(strong_label_weight=5.0, weak_label_weight=2.0)
    built = build_training_labels(Settings(database_url=url, trainer=trainer), SINCE, UNTIL)
    S, W = LabelKind.STRONG, LabelKind.WEAK
    expected = [
        Label(f"{ns}-A", "t1", 0, 5.0, S, model_version="3"),  # accept then reject: the latest wins
        # The pooled rate is 7 engaged shoppers / 52 examined impressions; the line half of it, 0.067.
        Label(f"{ns}-A", "t2", 1, 2.0, W, exploratory=True, model_version="3"),  # 2 of 4.5: Wilson low 0.24
        Label(f"{ns}-B", "t1", 0, 2.0, W, model_version="3"),  # 0 of 25: Wilson high 0.038
        Label(f"{ns}-C", "t3", 1, 2.0, W, model_version="3"),  # 3 clicks, no impression recorded: 3 of 3
        Label(f"{ns}-E", "t9", 0, 5.0, S),  # E's tags were never seen: the tagging version is not known
    ]  # D: 0 of 5 (high 0.17), F: 0 of 10 examined (high 0.09): no label
    assert built.labels == expected
    c = built.composition
    assert (c.total, c.strong, c.weak, c.replayed, c.exploratory, c.positives, c.negatives) == (5, 2, 3, 0, 1, 2, 3)
    assert c.weight == pytest.approx(16.0)
    assert built.fingerprint == fingerprint(expected)
    assert built.summary()["feedback_rows"] == 7

    # Rebuilding the window later gives the same set; a replay sample of the original labels joins it.
    original = [Label(f"{ns}-old{i}", "t1", 1, 1.0, W) for i in range(4)]
    settings = Settings(database_url=url, trainer=trainer)
    again = build_training_labels(settings, SINCE, UNTIL, original=original)
    assert build_training_labels(settings, SINCE, UNTIL).fingerprint == built.fingerprint
    assert (again.composition.replayed, again.composition.total) == (1, 6)  # 20 % of 6, rounded
    assert again.fingerprint != built.fingerprint


def test_tag_update_keeps_exploratory_tags() -> None:
    ev = _tag_event("l1", ["b", "a"], ["c", "a"])  # "a" also confident: not exploratory
    update = TagUpdate.from_event(ev, 0, 9)
    assert (update.tag_ids, update.exploratory_tag_ids) == (("a", "b", "c"), ("c",))
    assert TagUpdate.from_event(_tag_event("l1", ["a"]), 0, 9).exploratory_tag_ids == ()


def test_a_shopper_event_under_a_context_tag_speaks_of_that_tag_alone(migrated: str) -> None:
    ns = uuid.uuid4().hex[:8]
    day = datetime(2024, 3, 2, tzinfo=UTC)
    feed = Feed(ns)
    feed.add("L", "impression", 4, ts=day, tag_id="t1", position=1)
    feed.add("L", "click", 2, ts=day, tag_id="t1", position=1)
    feed.add("L", "impression", 3, ts=day)  # no context: every tag of the listing

    async def go() -> None:
        pool = async_pool(migrated, max_size=2)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, f"g-{ns}")
            await store.record_tags([TagUpdate.from_event(_tag_event(f"{ns}-L", ["t1", "t2"]), 0, 0)], "tags")
            await store.record_feedback([Consumed(e, "feedback", 0, i) for i, e in enumerate(feed.events)])
        finally:
            await pool.close()

    asyncio.run(go())
    window = read_feedback(migrated, TrainerSettings(), day, day + timedelta(days=1))
    got = {(r.tag_id, r.impressions, r.clicks) for r in window.rows if r.listing_id == f"{ns}-L"}
    assert got == {("t1", 7, 2), ("t2", 3, 0)}


def test_canary_arms_are_judged_on_the_tags_they_chose_to_show(migrated: str) -> None:
    from services.trainer.service import arm_feedback

    url, ns = migrated, uuid.uuid4().hex[:8]
    day = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(days=int(ns, 16) % 3000)  # a window of this run only
    shown = TagEvent(listing_id=f"{ns}-L", model_name="tag_model", model_version="7", source_event_id="s", tags=[
        Tag(tag_id="t1", name="t1", kind=TagKind.CATEGORY, score=0.9, source=TagSource.MODEL),
        Tag(tag_id="t2", name="t2", kind=TagKind.CATEGORY, score=0.2, source=TagSource.EXPLORATORY),
    ])  # fmt: skip
    feed = Feed(ns)
    feed.add("L", "impression", 10, ts=day)
    feed.add("L", "click", 4, ts=day)
    feed.add("L", "tag_reject", tag_id="t2", ts=day)

    async def go() -> None:
        pool = async_pool(url, max_size=2)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, f"g-{ns}")
            await store.record_tags([TagUpdate.from_event(shown, 0, 0)], "tags")
            await store.record_feedback([Consumed(e, "feedback", 0, i) for i, e in enumerate(feed.events)])
        finally:
            await pool.close()

    asyncio.run(go())
    with psycopg.connect(url) as conn:
        arms = arm_feedback(conn, day, day + timedelta(days=1))
    # t2's impressions, clicks and reject are the exploration's; one listing: its sums are its squares
    assert list(arms) == ["7"]
    got = arms["7"]
    assert (got.impressions, got.clicks, got.accepts, got.rejects, got.listings) == (10, 4, 0, 0, 1)
    assert got.ctr_sums == ListingSums(x_sq=16.0, n_sq=100.0, x_n=40.0)
    assert got.acceptance_sums == ListingSums(0.0, 0.0, 0.0)
