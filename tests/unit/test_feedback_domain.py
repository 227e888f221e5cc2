"""Feedback counting without I/O: dedup, attribution, hour buckets, re-attribution, atomicity."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.feedback.domain import (
    PENDING_TAG,
    Consumed,
    Deltas,
    TagUpdate,
    attribute,
    dedup,
    fact_of,
    fact_vector,
    hour_of,
    latest_tag_updates,
    max_offsets,
    plan_feedback,
    resume_positions,
    revenue_units,
)
from services.feedback.memory import MemoryFeedbackStore
from shared.events import FeedbackEvent, FeedbackType

TS = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)


def fb(eid: str, listing: str = "l1", type_: str = "click", user: str = "u1", **kw: object) -> FeedbackEvent:
    return FeedbackEvent(event_id=eid, user_id=user, listing_id=listing, type=FeedbackType(type_), ts=TS, **kw)


def consumed(events: list[FeedbackEvent], partition: int = 0, start: int = 0) -> list[Consumed]:
    return [Consumed(e, "feedback", partition, start + i) for i, e in enumerate(events)]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_hour_bucket_is_utc() -> None:
    from datetime import timedelta, timezone

    local = datetime(2026, 3, 1, 12, 59, tzinfo=timezone(timedelta(hours=2)))
    assert hour_of(local) == datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_revenue_is_exact_integer_units() -> None:
    assert revenue_units(0.1, 3) == 3000
    assert revenue_units(None, 5) == 0
    ev = fb("p", type_="purchase", price=19.99, quantity=2)
    vec = fact_vector(fact_of(ev))
    assert vec == [1, 0, 0, 0, 1, 2, 399800, 0, 0]
    # Only purchases carry revenue and units.
    assert fact_vector(fact_of(fb("c", type_="add_to_cart", price=5.0, quantity=3))) == [
        1,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
    ]


def test_dedup_keeps_first_occurrence() -> None:
    batch = consumed([fb("a"), fb("b"), fb("a", type_="purchase")])
    assert [c.offset for c in dedup(batch)] == [0, 1]


def test_attribution_rules() -> None:
    assert attribute(fb("a"), ("t1", "t2")) == ("t1", "t2")
    assert attribute(fb("a"), None) is None
    # A judged tag counts against that tag only, known listing or not.
    assert attribute(fb("a", type_="tag_reject", tag_id="t9"), None) == ("t9",)
    # For other types tag_id is the context, not the attribution.
    assert attribute(fb("a", tag_id="ctx"), ("t1",)) == ("t1",)


def test_plan_counts_per_listing_user_tag_and_hour() -> None:
    batch = consumed([fb("a"), fb("b", type_="impression"), fb("c", listing="l2"), fb("d", user="u2")])
    plan = plan_feedback(batch, {"l1": ("t1", "t2"), "l2": None})
    assert plan.pending == 1
    d = plan.deltas
    assert d.listing[("l1", "t1")] == [3, 1, 2, 0, 0, 0, 0, 0, 0]
    assert d.listing[("l2", PENDING_TAG)][0] == 1
    assert d.user[("u1", "t2")][0] == 2
    assert d.user[("u2", "t1")][0] == 1
    assert d.listing_hourly[("l1", "t1", datetime(2026, 3, 1, 10, tzinfo=UTC))][0] == 3
    assert [r.tag_ids for r in plan.archive] == [("t1", "t2"), ("t1", "t2"), None, ("t1", "t2")]


def test_latest_tag_update_and_max_offsets() -> None:
    ups = [TagUpdate("l1", ("a",), False, "v1", 0, 1), TagUpdate("l1", ("b",), False, "v1", 0, 5)]
    assert [u.tag_ids for u in latest_tag_updates(ups)] == [("b",)]
    assert max_offsets([("f", 0, 3), ("f", 0, 1), ("f", 1, 7)]) == {("f", 0): 3, ("f", 1): 7}


def test_redelivered_batch_is_counted_once() -> None:
    store = MemoryFeedbackStore()
    run(store.record_tags([TagUpdate("l1", ("t1",), False, "v1", 0, 0)], "tags"))
    batch = consumed([fb("a"), fb("b", type_="purchase", price=2.5, quantity=2), fb("a")])
    first = run(store.record_feedback(batch))
    again = run(store.record_feedback(batch))  # consumer restarted before committing offsets
    assert (first.counted, first.duplicates) == (2, 1)
    assert (again.counted, again.duplicates) == (0, 3)
    assert store.state.counts.listing[("l1", "t1")] == [2, 0, 1, 0, 1, 2, 50000, 0, 0]
    assert store.state.offsets[("feedback", "feedback", 0)] == 2
    assert store.state.counts.listing == store.recount().listing


def test_unknown_listing_is_pending_then_reattributed() -> None:
    store = MemoryFeedbackStore()
    run(store.record_feedback(consumed([fb("a", listing="new"), fb("b", listing="new", type_="impression")])))
    assert store.state.counts.listing[("new", PENDING_TAG)][0] == 2
    result = run(store.record_tags([TagUpdate("new", ("t1", "t2"), False, "v1", 1, 4)], "tags"))
    assert result.reattributed == 2
    counts = store.state.counts.without_zeros()
    assert ("new", PENDING_TAG) not in counts.listing
    assert counts.listing[("new", "t2")] == [2, 1, 1, 0, 0, 0, 0, 0, 0]
    assert counts.listing == store.recount().without_zeros().listing
    assert counts.user == store.recount().without_zeros().user
    # Later events of the listing are attributed directly.
    run(store.record_feedback(consumed([fb("c", listing="new")], start=10)))
    assert store.state.counts.listing[("new", "t1")][0] == 3


def test_older_tag_record_does_not_overwrite_newer() -> None:
    store = MemoryFeedbackStore()
    run(store.record_tags([TagUpdate("l1", ("new",), False, "v2", 0, 9)], "tags"))
    applied = run(store.record_tags([TagUpdate("l1", ("old",), False, "v1", 0, 3)], "tags"))
    assert applied.applied == 0
    run(store.record_feedback(consumed([fb("a")])))
    assert ("l1", "new") in store.state.counts.listing


def test_deleted_listing_counts_nowhere_but_is_archived() -> None:
    store = MemoryFeedbackStore()
    run(store.record_tags([TagUpdate.tombstone("gone", 0, 0)], "tags"))
    run(store.record_feedback(consumed([fb("a", listing="gone")])))
    assert len(store.state.archive) == 1
    assert not store.state.counts


def test_failed_unit_of_work_leaves_nothing() -> None:
    store = MemoryFeedbackStore()

    async def boom() -> None:
        async with store.unit_of_work() as uow:
            await uow.archive_and_count(plan_feedback(consumed([fb("a")]), {}).archive)
            raise RuntimeError("crash mid-batch")

    with pytest.raises(RuntimeError):
        run(boom())
    assert store.state.archived == set() and store.state.archive == []
    assert run(store.record_feedback(consumed([fb("a")]))).counted == 1


def test_deltas_merge_and_cancel() -> None:
    d = Deltas()
    f = fact_of(fb("a"))
    d.add(f, ("t",))
    d.add(f, ("t",), sign=-1)
    assert not d.without_zeros()


def test_resume_positions_follow_postgres_in_both_directions() -> None:
    stored = {("feedback", 0): 41, ("feedback", 2): 7, ("tags", 0): 3}
    assigned = [("feedback", 0), ("feedback", 1), ("tags", 0)]
    # Right after the last counted offset; partitions Postgres never counted keep the consumer's position.
    assert resume_positions(assigned, stored) == {("feedback", 0): 42, ("tags", 0): 4}
    assert resume_positions([], stored) == {}


def test_redelivery_is_skipped_by_offsets_and_a_resend_by_the_archive_key() -> None:
    store = MemoryFeedbackStore()
    run(store.record_tags([TagUpdate("l1", ("t1",), False, "v1", 0, 0)], "tags"))
    first = run(store.record_feedback(consumed([fb("a"), fb("b")])))
    # Kafka redelivers offsets 0-1 with a new record at 2: only the new one is looked at.
    again = run(store.record_feedback(consumed([fb("a"), fb("b"), fb("c")])))
    # The producer sent "a" once more, at a later offset: same id and ts, so the archive refuses it.
    resent = run(store.record_feedback(consumed([fb("a")], start=3)))
    assert (first.counted, again.counted, again.duplicates, resent.counted) == (2, 1, 2, 0)
    assert store.state.counts.listing[("l1", "t1")][0] == 3
    assert store.state.offsets[("feedback", "feedback", 0)] == 3
