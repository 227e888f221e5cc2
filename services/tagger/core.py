"""The tagger's pure core: raw listing records in, a plan of what to publish out.

No Kafka, no Triton here. The pipeline hands each consumed batch to :func:`plan_batch`,
infers tags for ``plan.to_tag`` with whatever backend it has, and turns the results
into records with :func:`tag_record` / :func:`tombstone_record`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.events import DecodeError, ListingEvent, ListingOp, Tag, TagEvent, decode_record, encode
from shared.tagmodel.localize import localize_tags

# The model reads at most this much of a listing (title first): tokenisers truncate far below it,
# and a multi-megabyte description must not travel to Triton (gRPC caps messages at 4 MB).
DEFAULT_MAX_TEXT_CHARS = 8_192


@dataclass(frozen=True)
class RawRecord:
    """What the core needs of a consumed Kafka message (decoupled from confluent's Message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Rejected:
    record: RawRecord
    error: Exception


@dataclass(frozen=True)
class ToTag:
    record: RawRecord
    listing: ListingEvent
    content_hash: str
    text: str  # what the model reads: the listing's tagged text, bounded


@dataclass
class BatchPlan:
    """What to do with one consumed batch, in input order per listing."""

    to_tag: list[ToTag] = field(default_factory=list)
    deleted: list[tuple[RawRecord, ListingEvent]] = field(default_factory=list)
    unchanged: list[RawRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None  # None is a tombstone
    source: RawRecord | None = None  # the consumed record it answers (dead-lettered if it cannot be produced)


def content_hash(listing: ListingEvent) -> str:
    """Hash of the text the model reads: an update that does not change it is not re-tagged."""
    return hashlib.sha256(listing.tagged_text().encode()).hexdigest()[:32]


def decode_listing(record: RawRecord) -> ListingEvent:
    """Validate a record; the key, when present, must match the listing id (keys drive ordering).

    Raises :class:`~shared.events.DecodeError`, the one error that becomes a dead letter.
    """
    return decode_record(ListingEvent, record.key, record.value)


def model_text(listing: ListingEvent, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> str:
    """The text the model reads: the listing's tagged text, cut at ``max_chars``."""
    return listing.tagged_text()[:max_chars]


class SeenContent:
    """Bounded memory of the last tagged (content hash, model version) per listing.

    Each entry remembers the partition it came from: when a partition is assigned
    (again), what this process remembers of it may be stale (another member may have
    tagged newer text meanwhile), so :meth:`forget_partitions` drops it.
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        self._capacity = capacity
        self._last: OrderedDict[str, tuple[str, tuple[str, int] | None]] = OrderedDict()

    def unchanged(self, listing_id: str, fingerprint: str) -> bool:
        entry = self._last.get(listing_id)
        return entry is not None and entry[0] == fingerprint

    def remember(self, listing_id: str, fingerprint: str, partition: tuple[str, int] | None = None) -> None:
        self._last[listing_id] = (fingerprint, partition)
        self._last.move_to_end(listing_id)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)

    def forget(self, listing_id: str) -> None:
        self._last.pop(listing_id, None)

    def forget_partitions(self, partitions: set[tuple[str, int]]) -> None:
        for listing_id in [lid for lid, (_, tp) in self._last.items() if tp in partitions]:
            del self._last[listing_id]


def plan_batch(
    records: Sequence[RawRecord], seen: SeenContent, model_version: str, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
) -> BatchPlan:
    """Decode and route every record of a batch: tag, tombstone, skip (unchanged) or reject.

    ``seen`` is updated as the plan is made, so a batch holding two updates of one
    listing with the same text tags it once.
    """
    plan = BatchPlan()
    for record in records:
        try:
            listing = decode_listing(record)
        except DecodeError as exc:
            plan.rejected.append(Rejected(record, exc))
            continue
        if listing.op == ListingOp.DELETED:
            seen.forget(listing.listing_id)
            plan.deleted.append((record, listing))
            continue
        digest = content_hash(listing)
        fingerprint = f"{digest}:{model_version}"
        if listing.op == ListingOp.UPDATED and seen.unchanged(listing.listing_id, fingerprint):
            plan.unchanged.append(record)
            continue
        seen.remember(listing.listing_id, fingerprint, (record.topic, record.partition))
        plan.to_tag.append(ToTag(record, listing, digest, model_text(listing, max_text_chars)))
    return plan


def tag_record(
    topic: str, item: ToTag, tags: list[Tag], model_name: str, model_version: str
) -> OutRecord:
    """The TagEvent record for one listing version: identical for identical input and model.

    Tags are named in the listing's locale (:func:`shared.tagmodel.localize.localize_tags`: Chinese
    names for a ``zh-*`` listing); their ids never depend on it.
    """
    event = TagEvent(
        listing_id=item.listing.listing_id,
        tags=localize_tags(tags, item.listing.locale),
        model_name=model_name,
        model_version=model_version,
        source_event_id=item.listing.event_id,
        content_hash=item.content_hash,
    )
    return OutRecord(topic, item.listing.listing_id.encode(), encode(event), item.record)


def tombstone_record(topic: str, listing: ListingEvent, source: RawRecord | None = None) -> OutRecord:
    """A deleted listing clears its tags from the compacted changelog."""
    return OutRecord(topic, listing.listing_id.encode(), None, source)


def next_offsets(records: Sequence[RawRecord]) -> dict[tuple[str, int], int]:
    """The offset to commit per partition after this batch (last offset + 1)."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        out[(r.topic, r.partition)] = max(out.get((r.topic, r.partition), 0), r.offset + 1)
    return out
