"""Hostile bytes at the edge (issue 9): every decoder yields a valid event or raises DecodeError.

Property tests over any byte string, any JSON-ish document (NaN, huge numbers, repeated keys,
lone surrogates, deep nesting) and mutations of valid encoded events, given to each decoder
at the edge: ``decode`` for the three consumed event types, the tagger's ``decode_listing``
and the feedback worker's ``decode_feedback`` / ``decode_tags``. Nothing but
:class:`~shared.events.DecodeError` may come out; a decoded event must survive a re-encode;
every record of a batch comes back exactly once, as an event or as a dead letter that says
why, where it came from, and fits ``max_bytes`` once encoded.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.feedback.app import decode_feedback, decode_tags
from services.tagger.core import RawRecord, decode_listing
from shared.events import DeadLetter, DecodeError, Event, FeedbackEvent, ListingEvent, TagEvent, decode, encode

MODELS: tuple[type[Event], ...] = (ListingEvent, FeedbackEvent, TagEvent)
# No example database: nothing written into the working tree, the same budget on every run.
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX_BYTES = (4096, 65_536, 1_000_000, 3_000_000)


class Num(str):
    """A number token written as it is (1e999999, a 5,000-digit integer): json.dumps cannot."""


class Pairs(tuple):  # type: ignore[type-arg]
    """An object as (key, value) pairs, so that a key can appear twice."""


def dump(value: Any, ascii_only: bool = True) -> str:
    """JSON text of ``value``; NaN/Infinity and lone surrogates are written as they are."""
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{dump(k, ascii_only)}:{dump(v, ascii_only)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def wire(value: Any, ascii_only: bool = True) -> bytes:
    # surrogatepass: a lone surrogate written raw becomes invalid UTF-8 on the wire, as a hostile producer sends it.
    return dump(value, ascii_only).encode("utf-8", "surrogatepass")


def doc(**fields: str) -> bytes:
    """A feedback event as JSON text with some values given as raw JSON."""
    base = {"event_id": '"f1"', "user_id": '"u1"', "listing_id": '"l1"', "type": '"click"',
            "ts": '"2026-01-01T00:00:00Z"'}
    return ("{" + ",".join(f'"{k}":{v}' for k, v in (base | fields).items()) + "}").encode()


def tag_doc(ts: str) -> bytes:
    return (f'{{"listing_id":"l1","tags":[],"model_name":"m","model_version":"1","source_event_id":"s",'
            f'"ts":"{ts}"}}').encode()


# The known hostile inputs of issue 9, kept as regressions.
NESTED = b"[" * 10_000 + b"]" * 10_000
HOSTILE: list[bytes | None] = [
    None, b"", b"null", NESTED, doc(price="[" * 10_000 + "]" * 10_000),
    b"1e999999", doc(price="1e999999"), doc(quantity="9" * 5000),
    b"NaN", doc(price="NaN"), doc(price="-Infinity"),
    doc(ts='"9999-12-31T23:59:59-23:59"'), doc(ts='"0001-01-01T00:00:00+23:59"'),
    tag_doc("9999-12-31T23:59:59-23:59"), tag_doc("0001-01-01T00:00:00+23:59"),
    doc(event_id='"\\ud800"'), doc(user_id='"x\\udc00"'), doc(event_id='"\\ud800\\u0041"'),
    doc().replace(b'"f1"', b'"\xed\xa0\x80"'),  # a surrogate encoded in UTF-8 (invalid UTF-8)
    doc().replace(b'{"event_id"', b'{"event_id":"f0","event_id"'),  # a repeated key
    doc().replace(b'"f1"', b'"\xff"'), b"\xff\xfe{}", b"\xef\xbb\xbf" + doc(), b"\xc0\x80",
    doc(event_id='"a\\u0000b"'), doc().replace(b"f1", b"f\x00"), doc(schema_version="3"),
]
FRAGMENTS = [b'"\\ud800"', b"NaN", b"1e999999", b"[" * 300, b'"ts":1,', b"\xff", b"\xed\xa0\x80", b"\\u0000", b"}"]

# ------------------------------------------------------------------ strategies

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
offsets = st.sampled_from([timedelta(0), timedelta(hours=5, minutes=30), timedelta(hours=-23, minutes=-59),
                           timedelta(hours=23, minutes=59)])


@st.composite
def timestamps(draw: st.DrawFn, lo: datetime, hi: datetime) -> str:
    moment = draw(st.datetimes(min_value=lo, max_value=hi))
    offset = draw(st.none() | offsets)
    return moment.isoformat() if offset is None else moment.replace(tzinfo=timezone(offset)).isoformat()


event_ts = timestamps(datetime(1990, 1, 3), datetime.now() - timedelta(days=2))
any_ts = timestamps(datetime(1900, 1, 1), datetime(9000, 1, 1))
_tag = st.fixed_dictionaries(
    {"tag_id": ids, "name": texts, "kind": st.sampled_from(["category", "attribute"]),
     "score": st.floats(0, 1), "source": st.sampled_from(["model", "zero-shot"])},
    optional={"name_zh": st.none() | texts, "taxonomy_id": st.none() | texts},
)
VALID: dict[type[Event], st.SearchStrategy[dict[str, Any]]] = {
    ListingEvent: st.fixed_dictionaries(
        {"event_id": ids, "listing_id": ids, "op": st.sampled_from(["created", "updated", "deleted"]),
         "title": texts.map(lambda t: t + "x"), "ts": event_ts},
        optional={"description": texts, "attributes": st.dictionaries(texts, texts, max_size=3),
                  "locale": st.text(st.characters(codec="utf-8"), max_size=5), "schema_version": st.just(1)},
    ),
    FeedbackEvent: st.fixed_dictionaries(
        {"event_id": ids, "user_id": ids, "listing_id": ids, "ts": event_ts,
         "type": st.sampled_from(["impression", "click", "add_to_cart", "purchase", "tag_accept", "tag_reject"])},
        optional={"tag_id": st.none() | ids, "quantity": st.integers(0, 1_000_000),
                  "price": st.none() | st.floats(0, 1e9)},
    ),
    TagEvent: st.fixed_dictionaries(
        {"listing_id": ids, "tags": st.lists(_tag, max_size=3), "model_name": texts, "model_version": texts,
         "source_event_id": texts},
        optional={"content_hash": texts, "ts": any_ts},
    ),
}
FIELDS = sorted({name for m in MODELS for name in m.model_fields} | {"tag_id", "score", "kind"})
numbers = st.integers() | st.floats() | st.sampled_from(
    ["1e999999", "-1e999999", "1e-999999", "9" * 5000, "-0", "0.0e0", "1E400", "123456789012345678901234567890"]
).map(Num)
strings = (
    texts | st.text(st.characters(categories=["Cs", "Cc"]), max_size=4) | st.sampled_from(FIELDS)
    | st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-02-30T00:00:00Z",
                       "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z", "created", "click", "category"])
)
# Long keys: a reason quotes an unknown key, and what is short in characters can be long in bytes.
wide_keys = st.builds(lambda c, n: c * n, st.sampled_from(["\x01", "\U0001f600", "a"]), st.integers(500, 3000))
keys = st.sampled_from(FIELDS) | strings | wide_keys
jsonish = st.recursive(
    st.none() | st.booleans() | numbers | strings,
    lambda inner: st.lists(inner, max_size=4) | st.lists(st.tuples(keys, inner), max_size=4).map(Pairs),
    max_leaves=16,
)
documents = st.builds(wire, jsonish, st.booleans())


@st.composite
def event_documents(draw: st.DrawFn, model: type[Event]) -> bytes:
    """A valid event of ``model`` with fields dropped, retyped, repeated, added or given a NUL."""
    pairs = list(draw(VALID[model]).items())
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "retype", "repeat", "extra", "nul"]))
        i = draw(st.integers(0, max(0, len(pairs) - 1)))
        if op == "drop" and pairs:
            pairs.pop(i)
        elif op == "retype" and pairs:
            pairs[i] = (pairs[i][0], draw(jsonish))
        elif op == "repeat" and pairs:
            pairs.insert(draw(st.integers(0, len(pairs))), (pairs[i][0], draw(jsonish)))
        elif op == "extra":
            pairs.append((draw(keys), draw(jsonish)))
        elif op == "nul" and pairs and isinstance(pairs[i][1], str):
            pairs[i] = (pairs[i][0], pairs[i][1] + "\x00")
    return wire(Pairs(pairs), draw(st.booleans()))


@st.composite
def mutated_events(draw: st.DrawFn, model: type[Event]) -> bytes:
    """The bytes of a valid event, then flipped, cut, spliced, or given NULs."""
    raw = bytearray(wire(Pairs(draw(VALID[model]).items())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "nul", "splice"]))
        pos = draw(st.integers(0, len(raw)))
        if op == "flip" and raw:
            raw[min(pos, len(raw) - 1)] ^= draw(st.integers(1, 255))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[pos:pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del raw[pos:]
        elif op == "nul":
            raw[pos:pos] = draw(st.sampled_from([b"\x00", b"\\u0000"]))
        else:
            raw[pos:pos] = draw(st.sampled_from(FRAGMENTS))
    return bytes(raw)


def hostile(model: type[Event]) -> st.SearchStrategy[bytes | None]:
    return st.one_of(st.none(), st.binary(max_size=200), documents, event_documents(model), mutated_events(model),
                     st.sampled_from(HOSTILE), VALID[model].map(lambda d: wire(Pairs(d.items()))))


# ------------------------------------------------------------------ the properties


def decoded_or_rejected(model: type[Event], raw: bytes | None) -> Event | None:
    """The event ``decode`` yields (it must round-trip), or None when it raised DecodeError."""
    try:
        event = decode(model, raw)
    except DecodeError as exc:
        assert exc.reason.strip() and exc.error_class
        return None
    assert type(event) is model
    assert decode(model, encode(event)) == event
    return event


def assert_every_decoder(raw: bytes | None, key: bytes | None = None) -> None:
    for model in MODELS:
        decoded_or_rejected(model, raw)
    assert_records(ListingEvent, [RawRecord("listings", 0, 0, key, raw)], 1_000_000)
    assert_records(FeedbackEvent, [RawRecord("feedback", 0, 0, key, raw)], 1_000_000)
    assert_records(TagEvent, [RawRecord("listing-tags", 0, 0, key, raw)], 1_000_000)


def assert_records(model: type[Event], records: list[RawRecord], max_bytes: int) -> None:
    """Each record comes back once: an event under its own key, or a dead letter that fits ``max_bytes``."""
    if model is ListingEvent:  # the tagger turns the DecodeError into its dead letter
        for r in records:
            try:
                listing = decode_listing(r)
            except DecodeError as exc:
                assert exc.reason.strip() and exc.error_class
            else:
                assert r.key is None or r.key == listing.listing_id.encode()
                assert decode(ListingEvent, encode(listing)) == listing
        return
    if model is FeedbackEvent:
        consumed, letters = decode_feedback(records, max_bytes=max_bytes)
        for c in consumed:
            key = records[c.offset].key
            assert key is None or key == c.event.user_id.encode()
            assert (c.topic, c.partition) == (records[c.offset].topic, records[c.offset].partition)
        good = [c.offset for c in consumed]
    else:
        updates, letters = decode_tags(records, max_bytes=max_bytes)
        good = [u.offset for u in updates]
    assert sorted(good + [d.offset for d in letters]) == list(range(len(records)))
    for letter in letters:
        record = records[letter.offset]
        original = record.value or b""
        assert (letter.topic, letter.partition) == (record.topic, record.partition)
        assert letter.reason.strip() and letter.error_class and letter.original_size == len(original)
        assert original.startswith(letter.original) and (letter.original_truncated or letter.original == original)
        size = len(encode(letter))
        assert size <= max_bytes, f"dead letter of {size} bytes > max_bytes={max_bytes}: {letter.reason[:200]!r}"
        assert decode(DeadLetter, encode(letter)) == letter


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_known_hostile_inputs_are_rejected(raw: bytes | None) -> None:
    for model in MODELS:
        assert decoded_or_rejected(model, raw) is None
    assert_every_decoder(raw)


@FAST
@given(raw=st.binary(max_size=300))
@example(raw=NESTED)
@example(raw=b"1e999999")
@example(raw=doc(price="NaN"))
@example(raw=doc(ts='"9999-12-31T23:59:59-23:59"'))
@example(raw=tag_doc("9999-12-31T23:59:59-23:59"))
@example(raw=doc(event_id='"\\ud800"'))
@example(raw=doc().replace(b'{"event_id"', b'{"event_id":"f0","event_id"'))
@example(raw=doc().replace(b'"f1"', b'"\xff"'))
def test_any_bytes(raw: bytes) -> None:
    assert_every_decoder(raw)


@FAST
@given(raw=documents, key=st.none() | st.binary(max_size=20))
def test_any_json_document(raw: bytes, key: bytes | None) -> None:
    assert_every_decoder(raw, key)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FAST
@given(data=st.data())
def test_valid_events_decode_and_round_trip(model: type[Event], data: st.DataObject) -> None:
    fields = data.draw(VALID[model])
    assert decoded_or_rejected(model, wire(Pairs(fields.items()), data.draw(st.booleans()))) is not None


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FAST
@given(data=st.data())
def test_mutated_events_decode_or_are_rejected(model: type[Event], data: st.DataObject) -> None:
    raw = data.draw(event_documents(model) | mutated_events(model))
    decoded_or_rejected(model, raw)
    assert_every_decoder(raw, data.draw(st.none() | st.sampled_from([b"f1", b"l1", b"u1"]) | st.binary(max_size=8)))


@st.composite
def batches(draw: st.DrawFn, model: type[Event], topic: str) -> list[RawRecord]:
    """Records of valid and hostile values, under their own key, another key or none; some huge."""
    records = []
    for i in range(draw(st.integers(1, 6))):
        fields = draw(st.none() | VALID[model])
        value = wire(Pairs(fields.items())) if fields is not None else draw(hostile(model))
        own = (fields or {}).get("user_id" if model is FeedbackEvent else "listing_id")
        key = draw(st.sampled_from([None, own.encode() if own else None, b""]) | st.binary(max_size=2100))
        pad = draw(st.sampled_from([0, 0, 0, 0, 70_000, 3_000_000]))
        if pad and value is not None:
            value += draw(st.sampled_from([b" ", b"x", b"\xff"])) * pad
        records.append(RawRecord(topic, i % 3, i, key, value))
    return records


# A reason that is short in characters but long in bytes: an unknown key of 3,000 control
# characters (6 bytes each once JSON-escaped) or emoji (4 bytes each).
WIDE_REASON = [
    doc(**{json.dumps("\x01" * 3000)[1:-1]: "1"}),
    doc(**{"\U0001f600" * 3000: "1"}),
]


@FAST
@given(records=batches(FeedbackEvent, "feedback"), max_bytes=st.sampled_from(MAX_BYTES))
@example(records=[RawRecord("feedback", 0, 0, b"k" * 2000, WIDE_REASON[0])], max_bytes=4096)
@example(records=[RawRecord("feedback", 0, 0, b"k" * 2000, WIDE_REASON[1])], max_bytes=4096)
@example(records=[RawRecord("feedback", 0, 0, None, WIDE_REASON[0] + b" " * 2_000_000)], max_bytes=1_000_000)
@example(records=[RawRecord("feedback", 0, i, b"u1", raw) for i, raw in enumerate(HOSTILE)], max_bytes=4096)
def test_feedback_records_are_events_or_dead_letters(records: list[RawRecord], max_bytes: int) -> None:
    assert_records(FeedbackEvent, records, max_bytes)


@FAST
@given(records=batches(TagEvent, "listing-tags"), max_bytes=st.sampled_from(MAX_BYTES))
@example(records=[RawRecord("listing-tags", 0, 0, b"\xff" * 300, None)], max_bytes=4096)
@example(records=[RawRecord("listing-tags", 0, i, b"l1", raw) for i, raw in enumerate(HOSTILE)], max_bytes=4096)
def test_tag_records_are_updates_or_dead_letters(records: list[RawRecord], max_bytes: int) -> None:
    assert_records(TagEvent, records, max_bytes)


@FAST
@given(records=batches(ListingEvent, "listings"))
def test_listing_records_are_events_or_decode_errors(records: list[RawRecord]) -> None:
    assert_records(ListingEvent, records, 1_000_000)

