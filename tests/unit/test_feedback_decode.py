"""Decoding at the edge: valid records become typed events, the rest dead letters with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.feedback.app import consumed_offsets, decode_feedback, decode_tags
from services.feedback.loadgen import tag_event
from shared.events import FeedbackEvent, FeedbackType, encode
from shared.fast_decode import FeedbackRow


@dataclass
class Rec:
    """A consumed record as both engines hand it over (topic, partition, offset, key, value)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def test_feedback_decode_and_dead_letters() -> None:
    ev = FeedbackEvent(
        event_id="e1", user_id="u", listing_id="l", type=FeedbackType.CLICK, ts=datetime(2026, 1, 1, tzinfo=UTC)
    )
    records = [
        Rec("fb", 0, 5, b"u", encode(ev)),
        Rec("fb", 0, 6, b"u", b"{oops"),
        Rec("fb", 1, 9, b"u", None),
        Rec("fb", 1, 10, b"u", encode(ev).replace(b'"click"', b'"teleport"')),
    ]
    good, bad = decode_feedback(records)
    assert [c.event for c in good] == [FeedbackRow.of(ev)]  # the fast decoder's row: the model's fields
    assert (good[0].partition, good[0].offset) == (0, 5)
    assert [(d.partition, d.offset) for d in bad] == [(0, 6), (1, 9), (1, 10)]
    assert all(d.reason and d.error_class and d.service == "feedback" for d in bad)
    assert "type" in bad[2].reason
    # Dead-lettered records count as consumed: their offsets are stored with the batch.
    assert consumed_offsets(records) == {("fb", 0): 6, ("fb", 1): 10}


def test_tags_decode_tombstone_and_garbage() -> None:
    records = [
        Rec("tags", 0, 1, b"l1", encode(tag_event("l1", ["b", "a", "a"]))),
        Rec("tags", 0, 2, b"l2", None),
        Rec("tags", 0, 3, None, None),
        Rec("tags", 0, 4, b"l3", b"[]"),
    ]
    updates, bad = decode_tags(records)
    assert [(u.listing_id, u.tag_ids, u.deleted) for u in updates] == [("l1", ("a", "b"), False), ("l2", (), True)]
    assert [d.offset for d in bad] == [3, 4]
