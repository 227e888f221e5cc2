"""Pure feedback logic: dedup, attribution, hour buckets and per-batch counter deltas.

Nothing here does I/O. :func:`handle_feedback` and :func:`handle_tags` are the two
units of work of the service, written against the small :class:`FeedbackUnitOfWork`
protocol; the Postgres adapter (``repository.py``) and an in-memory one
(``memory.py``, for unit tests) implement it, so the same counting runs in both.

Attribution rules
-----------------
* ``tag_accept``/``tag_reject`` with a ``tag_id`` count against that tag only (a
  merchant judged that tag); they never wait for the listing's tags.
* Every other event counts against the listing's tags as known when the event is
  processed; ``tag_id`` there is only the context that surfaced the listing and is
  archived as ``context_tag_id``.
* Unknown listing: the event is archived with ``tag_ids = NULL`` and counted under
  :data:`PENDING_TAG`; when the listing's tags arrive those counts move to the
  real tags (:func:`handle_tags`). A deleted listing has no tags: its later events
  are archived and counted nowhere per tag.

Examples
--------
>>> hour_of(datetime(2026, 1, 1, 10, 59, 59, tzinfo=UTC))
datetime.datetime(2026, 1, 1, 10, 0, tzinfo=datetime.timezone.utc)
>>> revenue_units(19.99, 3)
599700
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple, Protocol, TypeVar

from shared.events import FeedbackEvent, FeedbackType, TagEvent, TagSource
from shared.fast_decode import FeedbackRow

# A validated feedback event: the pydantic model, or the same fields from the fast decoder.
AnyFeedback = FeedbackEvent | FeedbackRow

PENDING_TAG = "__pending__"
# Revenue is kept as an integer number of 1/10_000 currency units: sums stay exact.
REVENUE_SCALE = 10_000

# Counter vector layout (see migrations: the same columns, same order).
COUNTER_FIELDS = (
    "events",
    "impressions",
    "clicks",
    "carts",
    "purchases",
    "units",
    "revenue",
    "accepts",
    "rejects",
)
_EVENTS, _IMPR, _CLICK, _CART, _PURCH, _UNITS, _REV, _ACC, _REJ = range(len(COUNTER_FIELDS))
_TYPE_SLOT = {
    FeedbackType.IMPRESSION.value: _IMPR,
    FeedbackType.CLICK.value: _CLICK,
    FeedbackType.ADD_TO_CART.value: _CART,
    FeedbackType.PURCHASE.value: _PURCH,
    FeedbackType.TAG_ACCEPT.value: _ACC,
    FeedbackType.TAG_REJECT.value: _REJ,
}
_PURCHASE = FeedbackType.PURCHASE.value
_JUDGEMENTS = frozenset({FeedbackType.TAG_ACCEPT.value, FeedbackType.TAG_REJECT.value})

K = TypeVar("K")
TagIds = tuple[str, ...]
ListingKey = tuple[str, str]  # (listing_id, tag_id)
UserKey = tuple[str, str]  # (user_id, tag_id)


class Fact(NamedTuple):
    """The part of a feedback event that counting needs (also what re-attribution reads back)."""

    user_id: str
    listing_id: str
    type: str
    quantity: int
    revenue: int  # REVENUE_SCALE units
    ts: datetime


class Consumed(NamedTuple):
    """A decoded feedback event with where it came from."""

    event: AnyFeedback
    topic: str
    partition: int
    offset: int


class ArchiveRow(NamedTuple):
    """One row of the raw-event archive."""

    event: AnyFeedback
    revenue: int
    tag_ids: TagIds | None  # None: listing tags not known yet
    partition: int
    offset: int


@dataclass(frozen=True)
class TagUpdate:
    """The latest tags of a listing (``tag_ids`` empty and ``deleted`` for a tombstone).

    ``exploratory_tag_ids`` are those of ``tag_ids`` the tagger published as exploratory
    (below-threshold candidates shown so feedback can confirm them): counted like any other
    tag, and flagged in the label view so training sets can say how many they hold.
    """

    listing_id: str
    tag_ids: TagIds
    deleted: bool
    model_version: str | None
    partition: int
    offset: int
    exploratory_tag_ids: TagIds = ()

    @classmethod
    def from_event(cls, ev: TagEvent, partition: int, offset: int) -> TagUpdate:
        # Sorted and unique: the same tag set always yields the same rows. A tag given twice, once
        # as exploratory and once not, is not exploratory (it was published with confidence).
        tags = tuple(sorted({t.tag_id for t in ev.tags}))
        confident = {t.tag_id for t in ev.tags if t.source != TagSource.EXPLORATORY}
        exploratory = tuple(sorted({t.tag_id for t in ev.tags} - confident))
        return cls(ev.listing_id, tags, False, ev.model_version, partition, offset, exploratory)

    @classmethod
    def tombstone(cls, listing_id: str, partition: int, offset: int) -> TagUpdate:
        return cls(listing_id, (), True, None, partition, offset)


@dataclass
class Deltas:
    """Additive counter changes of one unit of work, keyed like the count tables.

    There is no user×tag×hour counter: that view is derived from the archive
    (migration 3), which keeps about a third of the counter rows off the hot path.
    """

    listing: dict[ListingKey, list[int]] = field(default_factory=dict)
    listing_hourly: dict[tuple[str, str, datetime], list[int]] = field(default_factory=dict)
    user: dict[UserKey, list[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.listing or self.user)

    def add(self, fact: Fact, tag_ids: Iterable[str], sign: int = 1) -> None:
        """Count ``fact`` once against each tag (``sign=-1`` takes it back)."""
        # Hot path: only the 2-4 non-zero slots of the vector are touched per key.
        slots = fact_slots(fact, sign)
        hour = hour_of(fact.ts)
        lid, uid = fact.listing_id, fact.user_id
        for tag in tag_ids:
            _bump(self.listing, (lid, tag), slots)
            _bump(self.listing_hourly, (lid, tag, hour), slots)
            _bump(self.user, (uid, tag), slots)

    def merge(self, other: Deltas) -> None:
        for mine, theirs in (
            (self.listing, other.listing),
            (self.listing_hourly, other.listing_hourly),
            (self.user, other.user),
        ):
            for key, vec in theirs.items():
                _add(mine, key, vec)  # type: ignore[arg-type,misc]

    def without_zeros(self) -> Deltas:
        """Drop keys whose changes cancel out (a fact moved back and forth)."""
        return Deltas(*(_nonzero(d) for d in (self.listing, self.listing_hourly, self.user)))


def _nonzero(d: dict[K, list[int]]) -> dict[K, list[int]]:
    return {k: v for k, v in d.items() if any(v)}


def _bump(table: dict[K, list[int]], key: K, slots: Sequence[tuple[int, int]]) -> None:
    vec = table.get(key)
    if vec is None:
        vec = table[key] = [0] * len(COUNTER_FIELDS)
    for i, x in slots:
        vec[i] += x


def _add(table: dict[K, list[int]], key: K, vec: list[int]) -> None:
    cur = table.get(key)
    if cur is None:
        table[key] = list(vec)
    else:
        for i, x in enumerate(vec):
            if x:
                cur[i] += x


def hour_of(ts: datetime) -> datetime:
    """The UTC hour bucket of a timestamp."""
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def revenue_units(price: float | None, quantity: int) -> int:
    """Revenue of a purchase in 1/10_000 units (price rounded to 4 decimals first)."""
    if price is None:
        return 0
    return round(price * REVENUE_SCALE) * quantity


def revenue_decimal(units: int) -> Decimal:
    return Decimal(units).scaleb(-4)


def fact_of(ev: AnyFeedback) -> Fact:
    rev = revenue_units(ev.price, ev.quantity) if ev.type == FeedbackType.PURCHASE else 0
    return Fact(ev.user_id, ev.listing_id, str(ev.type), ev.quantity, rev, ev.ts)


def fact_slots(fact: Fact, sign: int = 1) -> list[tuple[int, int]]:
    """The non-zero ``(index, value)`` pairs of :func:`fact_vector`."""
    slots = [(_EVENTS, sign), (_TYPE_SLOT[fact.type], sign)]
    if fact.type == _PURCHASE:
        slots += [(_UNITS, sign * fact.quantity), (_REV, sign * fact.revenue)]
    return slots


def fact_vector(fact: Fact, sign: int = 1) -> list[int]:
    vec = [0] * len(COUNTER_FIELDS)
    vec[_EVENTS] = sign
    vec[_TYPE_SLOT[fact.type]] = sign
    if fact.type == FeedbackType.PURCHASE.value:
        vec[_UNITS] = sign * fact.quantity
        vec[_REV] = sign * fact.revenue
    return vec


def dedup(batch: Iterable[Consumed]) -> list[Consumed]:
    """First occurrence of each event id, in order (a producer retry can repeat one in a batch)."""
    seen: set[str] = set()
    out: list[Consumed] = []
    for c in batch:
        if c.event.event_id not in seen:
            seen.add(c.event.event_id)
            out.append(c)
    return out


def not_counted(batch: Iterable[Consumed], stored: Mapping[tuple[str, int], int]) -> list[Consumed]:
    """Records past the offset stored for their partition: the rest is a Kafka redelivery (restart,
    rebalance) of what a committed transaction already counted.

    Sound because each partition's transactions commit in offset order (one consumer at a time, and
    each resumes right after the stored offset).

    >>> ev = FeedbackEvent(event_id="e", user_id="u", listing_id="l", type="click", ts=datetime(2026, 1, 1))
    >>> [c.offset for c in not_counted([Consumed(ev, "fb", 0, 4), Consumed(ev, "fb", 0, 5)], {("fb", 0): 4})]
    [5]
    """
    return [c for c in batch if c.offset > stored.get((c.topic, c.partition), -1)]


def needs_listing_tags(ev: AnyFeedback) -> bool:
    # str(): the StrEnum's value, ~10x cheaper than its .value descriptor on the hot path.
    return not (str(ev.type) in _JUDGEMENTS and ev.tag_id)


def attribute(ev: AnyFeedback, listing_tags: TagIds | None) -> TagIds | None:
    """The tags an event counts against; None while the listing's tags are unknown."""
    if not needs_listing_tags(ev):
        return (ev.tag_id,)  # type: ignore[return-value]  # needs_listing_tags checked tag_id
    return listing_tags


def counted_tags(tag_ids: TagIds | None) -> TagIds:
    return (PENDING_TAG,) if tag_ids is None else tag_ids


@dataclass
class FeedbackPlan:
    """What one feedback micro-batch writes: archive rows, and (derived) their counter deltas."""

    archive: list[ArchiveRow]
    pending: int

    @property
    def deltas(self) -> Deltas:
        return count_rows(self.archive)


def plan_feedback(fresh: Sequence[Consumed], listing_tags: Mapping[str, TagIds | None]) -> FeedbackPlan:
    """Archive rows (with the tags each event counts against) for events not counted before."""
    rows: list[ArchiveRow] = []
    pending = 0
    for c in fresh:
        ev = c.event
        tags = attribute(ev, listing_tags.get(ev.listing_id))
        pending += tags is None
        rev = revenue_units(ev.price, ev.quantity) if ev.type == FeedbackType.PURCHASE else 0
        rows.append(ArchiveRow(ev, rev, tags, c.partition, c.offset))
    return FeedbackPlan(rows, pending)


def count_rows(rows: Iterable[ArchiveRow]) -> Deltas:
    """The counter deltas of archived rows: each counted once against each of its tags.

    The Postgres adapter computes the same with SQL over the rows it just archived
    (``repository._COUNT_FROM_STAGE``); tests check the two agree.
    """
    deltas = Deltas()
    for r in rows:
        deltas.add(fact_of(r.event), counted_tags(r.tag_ids))
    return deltas


def plan_reattribution(moved: Iterable[tuple[Fact, TagIds]]) -> Deltas:
    """Move pending facts from :data:`PENDING_TAG` to the tags that just arrived."""
    deltas = Deltas()
    for fact, tags in moved:
        deltas.add(fact, (PENDING_TAG,), sign=-1)
        deltas.add(fact, tags)
    return deltas.without_zeros()


def latest_tag_updates(updates: Iterable[TagUpdate]) -> list[TagUpdate]:
    """The last update per listing of a batch (the topic is a changelog: later wins)."""
    last: dict[str, TagUpdate] = {}
    for u in updates:
        last[u.listing_id] = u
    return [last[k] for k in sorted(last)]


def max_offsets(items: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """Highest offset per (topic, partition) among ``(topic, partition, offset)``."""
    out: dict[tuple[str, int], int] = {}
    for topic, partition, offset in items:
        key = (topic, partition)
        if offset > out.get(key, -1):
            out[key] = offset
    return out


def resume_positions(
    assigned: Iterable[tuple[str, int]], stored: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Where each assigned partition resumes: right after the last offset Postgres has counted.

    Partitions Postgres knows nothing about are left out (the consumer's own position
    stands). Postgres wins over Kafka's committed offsets in both directions: it is
    the only record of what the counts include.

    >>> resume_positions([("feedback", 0), ("feedback", 1)], {("feedback", 0): 41})
    {('feedback', 0): 42}
    """
    return {tp: stored[tp] + 1 for tp in sorted(set(assigned)) if tp in stored}


# --- units of work ----------------------------------------------------------------------------------


class FeedbackUnitOfWork(Protocol):
    """One atomic write: everything done through it commits together or not at all."""

    async def lock_offsets(self, group: str, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The stored offsets of these partitions (-1: none yet), locked until the unit of work ends."""
        ...

    async def listing_tags(self, listing_ids: Sequence[str]) -> dict[str, TagIds | None]:
        """Current tags of listings (None when unknown); serialises with :meth:`set_listing_tags`."""
        ...

    async def archive_and_count(self, rows: Sequence[ArchiveRow]) -> int:
        """Archive events not archived before (same ``event_id`` and ``ts``: a producer duplicate) and count
        each new one against its tags (see :func:`count_rows`), now or by a later rollup; returns how many
        were new."""
        ...

    async def add_counts(self, deltas: Deltas) -> None: ...

    async def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None: ...

    async def set_listing_tags(self, updates: Sequence[TagUpdate]) -> list[TagUpdate]:
        """Store tags unless a newer offset is stored already; returns the updates applied."""
        ...

    async def take_pending(self, tags_by_listing: Mapping[str, TagIds]) -> list[tuple[Fact, TagIds]]:
        """Mark the pending archived events of these listings as attributed; returns those already counted
        (under the pending tag): events a rollup has not counted yet are counted under their new tags."""
        ...


@dataclass(frozen=True)
class FeedbackResult:
    received: int
    duplicates: int
    counted: int
    pending: int


@dataclass(frozen=True)
class TagsResult:
    received: int
    applied: int
    reattributed: int


async def handle_feedback(
    uow: FeedbackUnitOfWork,
    batch: Sequence[Consumed],
    group: str,
    offsets: Mapping[tuple[str, int], int] | None = None,
) -> FeedbackResult:
    """Count a micro-batch exactly once: skip what the stored offsets cover, attribute, archive (which
    drops producer duplicates), count, save offsets.

    ``offsets`` are the highest consumed offsets (dead-lettered records included);
    by default those of ``batch``.
    """
    if offsets is None:
        offsets = max_offsets((c.topic, c.partition, c.offset) for c in batch)
    stored = await uow.lock_offsets(group, sorted(set(offsets) | {(c.topic, c.partition) for c in batch}))
    unique = dedup(not_counted(batch, stored))
    wanted = sorted({c.event.listing_id for c in unique if needs_listing_tags(c.event)})
    tags = await uow.listing_tags(wanted) if wanted else {}
    plan = plan_feedback(unique, tags)
    counted = await uow.archive_and_count(plan.archive) if plan.archive else 0
    await uow.save_offsets(group, offsets)
    return FeedbackResult(len(batch), len(batch) - counted, counted, plan.pending)


async def handle_tags(
    uow: FeedbackUnitOfWork,
    updates: Sequence[TagUpdate],
    group: str,
    topic: str,
    offsets: Mapping[tuple[str, int], int] | None = None,
) -> TagsResult:
    """Store listings' latest tags and attribute their pending feedback."""
    latest = latest_tag_updates(updates)
    applied = await uow.set_listing_tags(latest) if latest else []
    moved = await uow.take_pending({u.listing_id: u.tag_ids for u in applied}) if applied else []
    deltas = plan_reattribution(moved)
    if deltas:
        await uow.add_counts(deltas)
    if offsets is None:
        offsets = max_offsets((topic, u.partition, u.offset) for u in updates)
    await uow.save_offsets(group, offsets)
    return TagsResult(len(updates), len(applied), len(moved))
