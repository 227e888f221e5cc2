"""Typed event schemas: the one place that says what travels on each topic.

Every event carries ``schema_version``. Services validate bytes at the edge with
:func:`decode` and pass these typed objects inside. JSON Schemas in ``schemas/``
are generated from these models (``tagloop schemas write``); a test keeps them current.

Examples
--------
>>> ev = ListingEvent(event_id="e1", listing_id="l1", op="created", title="Red cotton shirt",
...                   ts=datetime(2026, 1, 1, tzinfo=UTC))
>>> decode(ListingEvent, encode(ev)) == ev
True
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


# Text that Postgres and every Kafka client can carry: no NUL character (Postgres rejects it in
# text columns, which would fail a whole feedback batch). Lone surrogates never reach here: the
# JSON parser rejects them.
_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=_NO_NUL)]
Id = Annotated[str, Field(min_length=1, max_length=200, pattern=_NO_NUL)]

# Events may be a little ahead of this machine's clock, never years: a timestamp far off
# would, among other things, open a day partition of the feedback archive per hostile event.
MAX_CLOCK_SKEW = timedelta(days=1)
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)  # the Unix epoch


class Event(BaseModel):
    """Base of every event: immutable, strict about unknown fields, versioned."""

    # allow_inf_nan=False: NaN/Infinity are not numbers a counter or a score can hold.
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64", allow_inf_nan=False
    )

    schema_version: Literal[1] = SCHEMA_VERSION

    @field_validator("ts", check_fields=False)
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        # Naive timestamps are ambiguous across services; treat them as UTC. An offset that moves
        # the instant out of datetime's range (year 1 at +23:59) is a validation error, not a crash.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError(f"timestamp out of range: {value.isoformat()}") from exc


def _plausible_ts(value: datetime) -> datetime:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST_TS <= aware <= utc_now() + MAX_CLOCK_SKEW:
        window = f"[{EARLIEST_TS.date()}, now + {MAX_CLOCK_SKEW.days} day]"
        raise ValueError(f"timestamp {value.isoformat()} is outside {window}")
    return value


# When something happened, as told by the producer of an input event.
EventTime = Annotated[datetime, AfterValidator(_plausible_ts)]


class ListingOp(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class ListingEvent(Event):
    """A listing was created, changed or deleted (topic ``listings``, key ``listing_id``)."""

    event_id: Id
    listing_id: Id
    op: ListingOp
    title: Text = Field(default="", max_length=2000)
    description: Text = Field(default="", max_length=100_000)
    attributes: dict[Annotated[str, Field(max_length=200)], Annotated[str, Field(max_length=10_000)]] = Field(
        default_factory=dict, max_length=500
    )
    locale: str = Field(default="en", max_length=35)  # a BCP 47 tag
    ts: EventTime

    @model_validator(mode="after")
    def _title_unless_deleted(self) -> ListingEvent:
        if self.op != ListingOp.DELETED and not self.title.strip():
            raise ValueError("title must be non-empty for created/updated listings")
        return self

    def tagged_text(self) -> str:
        """The text the tag model reads; its hash decides whether an update needs re-tagging."""
        parts = [self.title.strip(), self.description.strip()]
        parts += [f"{k}: {v}" for k, v in sorted(self.attributes.items())]
        return "\n".join(p for p in parts if p)


class TagKind(StrEnum):
    CATEGORY = "category"
    ATTRIBUTE = "attribute"


class TagSource(StrEnum):
    MODEL = "model"
    ZERO_SHOT = "zero-shot"
    # A below-threshold candidate published on purpose so feedback can confirm or reject it
    # (recall, not only precision). Consumers that only want confident tags skip these.
    EXPLORATORY = "exploratory"


class TagOrigin(StrEnum):
    """Where a tag came from, as its :class:`TagEvidence` tells it."""

    MODEL = "model"  # the trained head's own decision
    ZERO_SHOT = "zero-shot"  # cosine similarity between the listing and the tag's name
    HIERARCHY = "hierarchy"  # an ancestor of a category that was tagged (``implied_by``)
    MERCHANT = "merchant"  # the listing's merchant set or confirmed it


class EvidenceTerm(BaseModel):
    """One n-gram of the listing and its share of the tag's margin (TF-IDF value x the tag's weight)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    term: Text = Field(max_length=200)
    weight: float


class TagEvidence(BaseModel):
    """Why a tag was given: the terms that pushed it most, the embedding's share, the origin.

    For a model tag, ``margin = lexical + embedding + bias`` (the head's logit); ``terms`` are the
    few n-grams with the largest positive part of ``lexical`` and ``embedding_share`` is
    ``|embedding| / (|lexical| + |embedding|)``. A zero-shot tag carries the cosine
    ``similarity`` of the listing to the tag's name; a hierarchy tag the tag that implied it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    origin: TagOrigin
    terms: list[EvidenceTerm] = Field(default_factory=list, max_length=50)
    embedding_share: float | None = Field(default=None, ge=0.0, le=1.0)
    lexical: float | None = None
    embedding: float | None = None
    bias: float | None = None
    similarity: float | None = Field(default=None, ge=-1.0, le=1.0)
    implied_by: Id | None = None


class Tag(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tag_id: Id
    name: Text = Field(max_length=1000)
    kind: TagKind
    score: float = Field(ge=0.0, le=1.0)
    source: TagSource
    name_zh: str | None = None
    taxonomy_id: str | None = None
    # Left out of the JSON when absent: a tag without evidence is byte-identical to a version-2 tag.
    evidence: TagEvidence | None = Field(default=None, exclude_if=lambda v: v is None)


class TagEvent(Event):
    """Tags of one listing version (topic ``listing-tags``, key ``listing_id``; compacted).

    Deterministic for a given listing version and model version: only ``ts`` may
    differ between two records produced for the same source event. Version 2 may carry
    exploratory tags (``source="exploratory"``); version 3 may carry each tag's ``evidence``.
    An event is written as version 3 only when a tag carries evidence (the tagger's
    ``explain_tags`` setting, off by default), so consumers that know versions 1 and 2 read
    everything else unchanged; versions 1 and 2 stay valid.
    """

    schema_version: Literal[1, 2, 3] = 2  # type: ignore[assignment]

    listing_id: Id
    tags: list[Tag] = Field(max_length=1000)
    model_name: Text = Field(max_length=200)
    model_version: Text = Field(max_length=200)
    source_event_id: Text = Field(max_length=200)
    content_hash: str = ""
    ts: datetime = Field(default_factory=utc_now)

    @model_validator(mode="before")
    @classmethod
    def _version_3_with_evidence(cls, data: Any) -> Any:
        # Only the version's default is chosen here; what the tags are is validated as usual.
        if not isinstance(data, dict) or "schema_version" in data or not isinstance(data.get("tags"), list):
            return data
        tags = data["tags"]
        if any((t.get("evidence") if isinstance(t, dict) else getattr(t, "evidence", None)) is not None for t in tags):
            return {**data, "schema_version": 3}
        return data

    @model_validator(mode="after")
    def _evidence_needs_version_3(self) -> TagEvent:
        if self.schema_version < 3 and any(t.evidence is not None for t in self.tags):
            raise ValueError(f"tag evidence needs schema_version 3, not {self.schema_version}")
        return self


class FeedbackType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    TAG_ACCEPT = "tag_accept"
    TAG_REJECT = "tag_reject"


class FeedbackEvent(Event):
    """What a shopper or merchant did with a listing (topic ``feedback``, key ``user_id``).

    Version 2 adds ``position``: where the listing was shown (1 = first), so clicks can be
    weighted by how likely that slot is to be looked at. Version 1 events stay valid.
    """

    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]

    event_id: Id
    user_id: Id
    listing_id: Id
    type: FeedbackType
    # The tag that surfaced the listing (recommendation context) or the tag a merchant judged.
    tag_id: Id | None = None
    # Bounded so that quantity × price always fits the counters' columns (integer, numeric(20,4)).
    quantity: int = Field(default=1, ge=0, le=1_000_000)
    price: float | None = Field(default=None, ge=0.0, le=1e9)
    position: int | None = Field(default=None, ge=1, le=10_000)
    ts: EventTime


class DeadLetter(Event):
    """A message a service could not process, with why (topic ``dead-letter``).

    ``original`` is the record's value, cut to fit the dead-letter topic's record size when
    it is larger (``original_truncated``; ``original_size`` is the full length): the
    topic/partition/offset always find the whole record.
    """

    original: bytes
    original_key: bytes | None = None
    original_size: int | None = None
    original_truncated: bool = False
    topic: str
    partition: int
    offset: int
    error_class: str
    reason: str
    service: str
    ts: datetime = Field(default_factory=utc_now)


class UserAffinity(Event):
    """A user's current top tags (topic ``user-affinity``, key ``user_id``; compacted)."""

    user_id: str
    top_tags: list[tuple[str, float]]
    model_name: str
    events_seen: int
    ts: datetime = Field(default_factory=utc_now)


ALL_EVENTS: tuple[type[Event], ...] = (ListingEvent, TagEvent, FeedbackEvent, DeadLetter, UserAffinity)

E = TypeVar("E", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    """Serialise an event to the JSON bytes put on the wire."""
    return event.model_dump_json(exclude_none=False).encode()


class DecodeError(ValueError):
    """Bytes that are not a valid event of the expected type; ``reason`` says why in one line.

    The one error :func:`decode` raises: every service turns it into a dead letter.
    """

    def __init__(self, reason: str, error_class: str = "DecodeError") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_class = error_class


def decode(model: type[E], raw: bytes | None) -> E:
    """Validate wire bytes into a typed event, or raise :class:`DecodeError`.

    Rejected besides what the model forbids: no value (null), invalid UTF-8 or JSON,
    NaN/Infinity, nesting past the parser's limit, and an object with a key given twice
    (JSON leaves the meaning of ``{"a": 1, "a": 2}`` open; we do not guess).

    >>> decode(FeedbackEvent, b'[1]')
    Traceback (most recent call last):
    ...
    shared.events.DecodeError: FeedbackEvent: Input should be an object (at the top level)
    """
    if raw is None:
        raise DecodeError("message has no value (null)", "NullValue")
    try:
        event = model.model_validate_json(raw)
    except ValidationError as exc:
        raise DecodeError(f"{model.__name__}: {_summary(exc)}", "ValidationError") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # pragma: no cover - defensive
        raise DecodeError(f"{model.__name__}: {type(exc).__name__}: {exc}"[:2000], type(exc).__name__) from exc
    # Valid events are small and shallow: this second parse only looks for a repeated key.
    json.loads(raw, object_pairs_hook=_no_repeated_keys)
    return event


# The field each keyed topic's record key must equal (keys decide partitions, hence order).
RECORD_KEYS: dict[type[BaseModel], str] = {ListingEvent: "listing_id", TagEvent: "listing_id", FeedbackEvent: "user_id"}


def decode_record(model: type[E], key: bytes | None, value: bytes | None) -> E:
    """:func:`decode` a consumed record, and check that its key, when present, is the event's key field.

    A record under another key (or an empty one) sits in the wrong partition, out of order
    with its siblings: it is rejected like any other bad input.

    >>> ev = FeedbackEvent(event_id="e", user_id="u1", listing_id="l", type="click", ts=utc_now())
    >>> decode_record(FeedbackEvent, b"u1", encode(ev)) == ev
    True
    >>> decode_record(FeedbackEvent, b"u2", encode(ev))
    Traceback (most recent call last):
    ...
    shared.events.DecodeError: message key b'u2' is not the event's user_id 'u1'
    """
    event = decode(model, value)
    field = RECORD_KEYS.get(model)
    if field is not None and key is not None and key != getattr(event, field).encode():
        expected = getattr(event, field)
        raise DecodeError(f"message key {key[:100]!r} is not the event's {field} {expected!r}", "KeyMismatch")
    return event


def tombstone_id(key: bytes | None) -> str:
    """The id a tombstone (a record with no value on a compacted topic) deletes: its key."""
    if not key:
        raise DecodeError("tombstone without a key", "NullValue")
    try:
        ident = key.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"tombstone key is not UTF-8: {key[:100]!r}", "KeyMismatch") from exc
    if len(ident) > 200 or "\x00" in ident:
        raise DecodeError(f"tombstone key is not an id: {key[:100]!r}", "KeyMismatch")
    return ident


def _summary(exc: ValidationError) -> str:
    """The first few errors on one line, with where they are and without the (possibly huge) input."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        # Locations can be attacker-chosen keys: keep each short and printable.
        where = ".".join(repr(p)[:40] if isinstance(p, str) and not p.isprintable() else str(p)[:40]
                         for p in err["loc"]) or "the top level"
        parts.append(f"{err['msg'][:300]} (at {where})")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DecodeError(f"key {key[:100]!r} appears more than once in one JSON object", "RepeatedKey")
        seen[key] = value
    return seen
