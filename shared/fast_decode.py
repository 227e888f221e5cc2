"""A fast validating decoder for :class:`~shared.events.FeedbackEvent`: msgspec for the common case.

The hot path of the feedback worker decodes every record; pydantic (``shared.events.decode``)
spends ~13-25 µs per event there, msgspec ~1-2 µs. The contract stays the pydantic model and
its JSON Schema: this decoder accepts and rejects exactly what
``decode_record(FeedbackEvent, key, value)`` does, by construction:

* the **fast path** takes only what both parsers read the same way: pure ASCII without a
  backslash (no escapes, so no hidden NUL, surrogate or repeated key written differently),
  no field name written twice, strict JSON types (no ``"3"`` for an int, no ``3.0``), a
  timestamp of the plain RFC 3339 shape inside the model's plausible window. msgspec checks
  the same bounds as the model (lengths, ranges, enum, literal versions, unknown fields);
* **everything else** (anything the fast path is not sure of, valid or not) goes to
  ``decode_record`` itself, which gives the verdict and the dead-letter reason.

So a record is accepted here iff pydantic accepts it, with equal field values; the tests
check that on the hostile corpus and the decoding property tests.

>>> ev = decode_feedback(b"u1", b'{"event_id":"e1","user_id":"u1","listing_id":"l1","type":"click",'
...                      b'"ts":"2026-01-01T00:00:00Z"}')
>>> (ev.event_id, ev.type.value, ev.quantity, ev.ts.isoformat())
('e1', 'click', 1, '2026-01-01T00:00:00+00:00')
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from shared.events import EARLIEST_TS, MAX_CLOCK_SKEW, DecodeError, FeedbackEvent, FeedbackType, decode_record

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """The wire form, as strict as the model (ts is checked separately: see :func:`_timestamp`).

    Optional fields default to ``UNSET`` so that the keys present can be counted.
    """

    event_id: _Id
    user_id: _Id
    listing_id: _Id
    type: FeedbackType
    ts: str
    schema_version: Literal[1, 2] | UnsetType = UNSET
    tag_id: _Id | UnsetType | None = UNSET
    quantity: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | UnsetType = UNSET
    price: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] | UnsetType | None = UNSET
    position: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | UnsetType | None = UNSET


class FeedbackRow(msgspec.Struct, frozen=True, gc=False):
    """A validated feedback event: the fields of :class:`FeedbackEvent`, without pydantic's overhead.

    ``ts`` is timezone-aware UTC, as the model makes it.
    """

    event_id: str
    user_id: str
    listing_id: str
    type: FeedbackType
    ts: datetime
    schema_version: int = 2
    tag_id: str | None = None
    quantity: int = 1
    price: float | None = None
    position: int | None = None

    @classmethod
    def of(cls, ev: FeedbackEvent) -> FeedbackRow:
        return cls(
            ev.event_id, ev.user_id, ev.listing_id, ev.type, ev.ts, ev.schema_version, ev.tag_id, ev.quantity,
            ev.price, ev.position,
        )


_DECODER = msgspec.json.Decoder(_Wire)
# The shapes of RFC 3339 both parsers read alike (anything else goes to pydantic).
_TS = re.compile(r"\d{4}-\d\d-\d\dT([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?")


class _Latest:
    """The latest plausible timestamp, refreshed every few thousand calls: a stale bound is lower than the
    true one, so it only sends a few more borderline events to the slow path (which decides them)."""

    bound = EARLIEST_TS
    calls = 0

    @classmethod
    def get(cls) -> datetime:
        cls.calls += 1
        if cls.calls >= 4096 or cls.bound is EARLIEST_TS:
            cls.calls = 0
            cls.bound = datetime.now(UTC) + MAX_CLOCK_SKEW
        return cls.bound


def _timestamp(text: str) -> datetime | None:
    if not _TS.fullmatch(text):
        return None
    try:
        ts = datetime.fromisoformat(text)
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    if not EARLIEST_TS <= ts <= _Latest.get():
        return None
    return ts


def _quotes(w: _Wire) -> int:
    """Quote characters of the object ``w`` came from, if each key was there once (2 per key, 2 per string)."""
    n = 20  # event_id, user_id, listing_id, type, ts: keys and string values
    if w.schema_version is not UNSET:
        n += 2
    if w.quantity is not UNSET:
        n += 2
    for opt in (w.tag_id, w.price, w.position):
        if opt is not UNSET:
            n += 4 if isinstance(opt, str) else 2
    return n


def fast_path(value: bytes) -> FeedbackRow | None:
    """The event if the fast path can vouch for it, else None (then ask :func:`decode_record`)."""
    if not value.isascii() or b"\\" in value:
        return None
    try:
        w = _DECODER.decode(value)
    except msgspec.DecodeError:  # ValidationError included
        return None
    # Without backslashes every quote delimits a key or a string value: a key given twice adds two.
    if value.count(b'"') != _quotes(w):
        return None
    ts = _timestamp(w.ts)
    if ts is None:
        return None
    return FeedbackRow(
        w.event_id, w.user_id, w.listing_id, w.type, ts,
        2 if w.schema_version is UNSET else w.schema_version,
        None if w.tag_id is UNSET else w.tag_id,
        1 if w.quantity is UNSET else w.quantity,
        None if w.price is UNSET else w.price,
        None if w.position is UNSET else w.position,
    )  # fmt: skip


def decode_feedback(key: bytes | None, value: bytes | None) -> FeedbackRow:
    """``decode_record(FeedbackEvent, key, value)``, fast; raises the same :class:`DecodeError`.

    The record key, when present, must be the event's ``user_id`` (its partition).
    """
    row = fast_path(value) if value is not None else None
    if row is None:
        return FeedbackRow.of(decode_record(FeedbackEvent, key, value))
    if key is not None and key != row.user_id.encode():
        raise DecodeError(f"message key {key[:100]!r} is not the event's user_id {row.user_id!r}", "KeyMismatch")
    return row
