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

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event: immutable, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    schema_version: Literal[1] = SCHEMA_VERSION

    @field_validator("ts", check_fields=False)
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        # Naive timestamps are ambiguous across services; treat them as UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ListingOp(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class ListingEvent(Event):
    """A listing was created, changed or deleted (topic ``listings``, key ``listing_id``)."""

    event_id: str = Field(min_length=1, max_length=200)
    listing_id: str = Field(min_length=1, max_length=200)
    op: ListingOp
    title: str = Field(default="", max_length=2000)
    description: str = Field(default="", max_length=100_000)
    attributes: dict[str, str] = Field(default_factory=dict)
    locale: str = "en"
    ts: datetime

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


class Tag(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tag_id: str = Field(min_length=1)
    name: str
    kind: TagKind
    score: float = Field(ge=0.0, le=1.0)
    source: TagSource
    name_zh: str | None = None
    taxonomy_id: str | None = None


class TagEvent(Event):
    """Tags of one listing version (topic ``listing-tags``, key ``listing_id``; compacted).

    Deterministic for a given listing version and model version: only ``ts`` may
    differ between two records produced for the same source event.
    """

    listing_id: str = Field(min_length=1)
    tags: list[Tag]
    model_name: str
    model_version: str
    source_event_id: str
    content_hash: str = ""
    ts: datetime = Field(default_factory=utc_now)


class FeedbackType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    TAG_ACCEPT = "tag_accept"
    TAG_REJECT = "tag_reject"


class FeedbackEvent(Event):
    """What a shopper or merchant did with a listing (topic ``feedback``, key ``user_id``)."""

    event_id: str = Field(min_length=1, max_length=200)
    user_id: str = Field(min_length=1, max_length=200)
    listing_id: str = Field(min_length=1, max_length=200)
    type: FeedbackType
    # The tag that surfaced the listing (recommendation context) or the tag a merchant judged.
    tag_id: str | None = None
    quantity: int = Field(default=1, ge=0)
    price: float | None = Field(default=None, ge=0.0)
    ts: datetime


class DeadLetter(Event):
    """A message a service could not process, with why (topic ``dead-letter``)."""

    original: bytes
    original_key: bytes | None = None
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


def decode(model: type[E], raw: bytes | None) -> E:
    """Validate wire bytes into a typed event; raises ``pydantic.ValidationError`` or ``ValueError``."""
    if raw is None:
        raise ValueError("message has no value")
    return model.model_validate_json(raw)
