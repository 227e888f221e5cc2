"""Hostile input at the edge: every kind the issue lists becomes one DecodeError with a reason.

The same table feeds the tagger's planner and the feedback decoders: each hostile record
comes back as a dead letter (never an exception), small enough for the dead-letter topic.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.feedback.app import decode_feedback, decode_tags
from services.tagger.core import RawRecord, SeenContent, plan_batch
from shared.dead_letters import make_dead_letter
from shared.events import DecodeError, FeedbackEvent, ListingEvent, TagEvent, decode, encode

NOW = datetime.now(UTC).replace(microsecond=0)
LISTING = json.loads(encode(ListingEvent(event_id="e1", listing_id="l1", op="created", title="Red shirt", ts=NOW)))
FEEDBACK = json.loads(encode(FeedbackEvent(event_id="f1", user_id="u1", listing_id="l1", type="click", ts=NOW)))


def with_(base: dict, **changes: object) -> bytes:
    return json.dumps({**base, **changes}).encode()


def hostile(base: dict, text_field: str, number_field: str) -> dict[str, bytes | None]:
    """The issue's list of broken encodings and shapes, built around one valid event."""
    valid = json.dumps(base).encode()
    return {
        "invalid utf-8": valid.replace(b'"' + base[text_field].encode() + b'"', b'"\xff\xfe"', 1),
        "json array": b"[1, 2, 3]",
        "json number": b"42",
        "json string": b'"hello"',
        "not json": b"{oops",
        "empty bytes": b"",
        "deeply nested": b"[" * 10_000 + b"]" * 10_000,
        "deeply nested field": valid[:-1] + b', "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        "huge number": with_(base, **{number_field: int("9" * 400)}),
        "huge exponent": valid.replace(b"}", b', "q": 1e999999}'),
        "NaN": valid[:-1] + f', "{number_field}": NaN}}'.encode(),
        "Infinity": valid[:-1] + f', "{number_field}": Infinity}}'.encode(),
        "wrong type": with_(base, **{text_field: 12}),
        "unknown schema_version": with_(base, schema_version=99),
        "unknown field": with_(base, surprise=True),
        "null value": None,
        "repeated key": valid[:-1] + f', "{text_field}": "other"}}'.encode(),
        "NUL in text": with_(base, **{text_field: "a\x00b"}),
        "lone surrogate": valid.replace(f'"{base[text_field]}"'.encode(), b'"\\ud800"', 1),
        "timestamp out of range": with_(base, ts="0001-01-01T00:00:00+23:59"),
        "timestamp far ahead": with_(base, ts="9999-12-31T23:59:59-23:59"),
        "timestamp years ahead": with_(base, ts="2199-01-01T00:00:00Z"),
    }


@pytest.mark.parametrize("case", sorted(hostile(LISTING, "title", "ts")))
def test_every_hostile_listing_is_one_decode_error(case: str) -> None:
    raw = hostile(LISTING, "title", "ts")[case]
    with pytest.raises(DecodeError) as err:
        decode(ListingEvent, raw)
    assert err.value.reason and "\n" not in err.value.reason and len(err.value.reason) <= 2000


@pytest.mark.parametrize("case", sorted(hostile(FEEDBACK, "user_id", "quantity")))
def test_every_hostile_feedback_event_is_one_decode_error(case: str) -> None:
    with pytest.raises(DecodeError):
        decode(FeedbackEvent, hostile(FEEDBACK, "user_id", "quantity")[case])


def test_out_of_range_counts_are_rejected_before_postgres() -> None:
    # quantity and price bound what a purchase adds to integer / numeric(20,4) counters.
    for change in ({"quantity": 2**31}, {"price": 1e12}, {"price": -1}, {"tag_id": ""}, {"user_id": "u" * 201}):
        with pytest.raises(DecodeError):
            decode(FeedbackEvent, with_(FEEDBACK, **change))


def test_the_tagger_dead_letters_every_hostile_listing_and_tags_the_good_one() -> None:
    cases = hostile(LISTING, "title", "ts")
    records = [RawRecord("listings", 0, i, b"l1", raw) for i, raw in enumerate(cases.values())]
    records += [
        RawRecord("listings", 0, len(records), b"", encode_listing()),  # empty key
        RawRecord("listings", 0, len(records) + 1, b"other", encode_listing()),  # key of another listing
        RawRecord("listings", 0, len(records) + 2, b"l1", encode_listing()),  # the good one
    ]
    plan = plan_batch(records, SeenContent(), "v1")
    assert [item.record.offset for item in plan.to_tag] == [len(records) - 1]
    assert len(plan.rejected) == len(records) - 1
    assert all(isinstance(r.error, DecodeError) for r in plan.rejected)


def test_a_multi_megabyte_listing_reaches_the_model_bounded() -> None:
    big = ListingEvent(event_id="e", listing_id="l", op="created", title="Red shirt", ts=NOW,
                       attributes={f"a{i}": "x" * 9_000 for i in range(400)})  # 3.6 MB of valid attributes
    plan = plan_batch([RawRecord("listings", 0, 0, b"l", encode(big))], SeenContent(), "v1", max_text_chars=4096)
    assert len(plan.to_tag[0].text) == 4096 and plan.to_tag[0].text.startswith("Red shirt")


def test_feedback_and_tag_records_under_a_foreign_or_empty_key_are_dead_letters() -> None:
    from tests.unit.test_feedback_decode import Rec

    good = encode(FeedbackEvent(event_id="f", user_id="u1", listing_id="l", type="click", ts=NOW))
    got, bad = decode_feedback([Rec("fb", 0, 0, b"u1", good), Rec("fb", 0, 1, b"", good), Rec("fb", 0, 2, b"x", good)])
    assert [c.offset for c in got] == [0] and [d.offset for d in bad] == [1, 2]
    tag = encode(TagEvent(listing_id="l1", tags=[], model_name="m", model_version="1", source_event_id="e"))
    updates, bad = decode_tags([Rec("t", 0, 0, b"l2", tag), Rec("t", 0, 1, b"\xff", None), Rec("t", 0, 2, b"", None)])
    assert updates == [] and [d.offset for d in bad] == [0, 1, 2]


@pytest.mark.parametrize("max_bytes", [4096, 65_536, 1_000_000])
def test_a_dead_letter_never_exceeds_the_record_size_and_says_it_was_cut(max_bytes: int) -> None:
    for size in (0, 100, max_bytes, 3 * 1024 * 1024):
        letter = make_dead_letter(topic="listings", partition=2, offset=9, key=b"k" * 5000, value=b"\xff" * size,
                                  error=DecodeError("x" * 5000), service="tagger", max_bytes=max_bytes)
        assert len(encode(letter)) <= max_bytes
        assert letter.original_size == size
        assert letter.original_truncated == (len(letter.original) < size or len(letter.original_key or b"") < 5000)
        assert (letter.topic, letter.partition, letter.offset) == ("listings", 2, 9)
        assert letter.original == b"\xff" * len(letter.original)  # a prefix of the original


def encode_listing() -> bytes:
    return json.dumps(LISTING).encode()
