"""The fast feedback decoder says exactly what ``decode_record(FeedbackEvent, ...)`` says.

Same verdict (accepted with equal fields, or rejected with the same reason) on the hostile corpus
(``tests/hostile.py``), the known hostile inputs and the generated documents of the decoding property
tests, and on ASCII events built to take the fast path (where the two parsers could differ).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.feedback.loadgen import synthetic_feedback
from shared.events import DecodeError, FeedbackEvent, decode_record, encode
from shared.fast_decode import FeedbackRow, decode_feedback, fast_path
from tests.hostile import hostile_records
from tests.unit.test_decode_properties import (
    FAST,
    HOSTILE,
    VALID,
    Pairs,
    documents,
    event_documents,
    mutated_events,
    wire,
)

Verdict = FeedbackRow | tuple[str, str]


def reference(key: bytes | None, raw: bytes | None) -> Verdict:
    try:
        return FeedbackRow.of(decode_record(FeedbackEvent, key, raw))
    except DecodeError as exc:
        return (exc.error_class, exc.reason)


def fast(key: bytes | None, raw: bytes | None) -> Verdict:
    try:
        return decode_feedback(key, raw)
    except DecodeError as exc:
        return (exc.error_class, exc.reason)


def assert_same(key: bytes | None, raw: bytes | None) -> None:
    assert fast(key, raw) == reference(key, raw), raw


VALID_EVENT = {"event_id": "e1", "user_id": "u1", "listing_id": "l1", "type": "purchase", "quantity": 2,
               "price": 9.99, "ts": "2026-01-01T10:00:00Z"}  # fmt: skip


def test_canonical_events_take_the_fast_path_and_equal_pydantic() -> None:
    events = list(synthetic_feedback("fd", 500, n_users=20))
    for ev in events:
        raw = encode(ev)
        row = fast_path(raw)
        assert row is not None, raw
        assert row == FeedbackRow.of(ev)
        assert_same(ev.user_id.encode(), raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"e1","event_id":"e2","user_id":"u1","listing_id":"l1","type":"click","ts":"2026-01-01T00:00:00Z"}',
        b'{"event_id":"e1","user_id":"u1","listing_id":"l1","type":"click","ts":"2026-01-01T00:00:00Z","quantity":"3"}',
        b'{"event_id":"e1","user_id":"u1","listing_id":"l1","type":"click","ts":"2026-01-01T00:00:00Z","quantity":3.0}',
        b'{"event_id":"e\\u0031","user_id":"u1","listing_id":"l1","type":"click","ts":"2026-01-01T00:00:00Z"}',
        b'{"event_id":"e1","user_id":"u1","listing_id":"l1","type":"click","ts":"2026-01-01 00:00:00"}',
        b'{"event_id":"e1","user_id":"u1","listing_id":"l1","type":"click","ts":1767225600}',
        b'{"event_id":"e1","user_id":"u1","listing_id":"l1","type":"click","ts":"2099-01-01T00:00:00Z"}',
        b'{"event_id":"\xc3\xa9","user_id":"u1","listing_id":"l1","type":"click","ts":"2026-01-01T00:00:00Z"}',
    ],
)
def test_what_the_fast_path_is_not_sure_of_goes_to_pydantic(raw: bytes) -> None:
    assert fast_path(raw) is None
    assert_same(b"u1", raw)


def test_hostile_corpus_same_verdicts() -> None:
    for key, value, what in hostile_records(VALID_EVENT, "user_id", 400, seed=3, oversized=1):
        assert isinstance(fast(key, value), tuple), what  # all hostile: rejected
        assert_same(key, value)
    for raw in HOSTILE:
        assert_same(None, raw)
        assert_same(b"u1", raw)


@st.composite
def ascii_events(draw: st.DrawFn) -> bytes:
    """ASCII feedback events (the fast path's domain), some with a field repeated, retyped or out of range."""
    ident = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=8)
    moment = draw(st.datetimes(datetime(1969, 12, 30), datetime.now() + timedelta(days=3)))
    tz = draw(st.sampled_from(["Z", "+00:00", "+05:30", "-23:59", ""]))
    ts = moment.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"]))) + tz
    fields: dict[str, Any] = {
        "event_id": draw(ident), "user_id": draw(ident), "listing_id": draw(ident),
        "type": draw(st.sampled_from(["click", "purchase", "tag_accept", "Click", "teleport"])), "ts": ts,
    }  # fmt: skip
    optional = {
        "tag_id": st.none() | ident,
        "quantity": st.integers(-2, 1_000_002) | st.floats(0, 5) | st.booleans(),
        "price": st.none() | st.floats(-1, 1.1e9) | st.integers(0, 10**10),
        "position": st.none() | st.integers(0, 10_001),
        "schema_version": st.sampled_from([1, 2, 3, 1.0, True]),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            fields[name] = draw(strategy)
    pairs = list(fields.items())
    if draw(st.integers(0, 4)) == 0:
        pairs.append(draw(st.sampled_from(pairs)))  # a key twice
    return _dump(pairs)


def _dump(pairs: list[tuple[str, Any]]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()


@FAST
@given(raw=ascii_events(), key=st.none() | st.sampled_from([b"u1", b"", b"x"]))
def test_ascii_events_same_verdict(raw: bytes, key: bytes | None) -> None:
    assert_same(key, raw)


@FAST
@given(data=st.data())
def test_property_documents_same_verdict(data: st.DataObject) -> None:
    raw = data.draw(
        documents | event_documents(FeedbackEvent) | mutated_events(FeedbackEvent)
        | VALID[FeedbackEvent].map(lambda d: wire(Pairs(d.items())))
    )
    assert_same(data.draw(st.none() | st.binary(max_size=4)), raw)


def test_naive_and_offset_timestamps_become_utc_like_pydantic() -> None:
    for ts in ("2026-01-01T10:00:00", "2026-01-01T15:30:00+05:30", "2026-01-01T10:00:00.5Z"):
        raw = _dump([("event_id", "e"), ("user_id", "u"), ("listing_id", "l"), ("type", "click"), ("ts", ts)])
        row = fast_path(raw)
        assert row is not None and row.ts.tzinfo is UTC
        assert_same(None, raw)
