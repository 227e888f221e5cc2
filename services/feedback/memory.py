"""An in-memory feedback store: the domain's units of work without I/O (unit tests, dry runs).

It mirrors :class:`~services.feedback.repository.PostgresFeedbackStore`: a unit of
work mutates a copy of the state that replaces the state only when it completes,
so a failure mid-batch leaves nothing behind, like a rolled-back transaction.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from services.feedback.domain import (
    ArchiveRow,
    Consumed,
    Deltas,
    Fact,
    FeedbackResult,
    TagIds,
    TagsResult,
    TagUpdate,
    count_rows,
    counted_tags,
    fact_of,
    handle_feedback,
    handle_tags,
)


@dataclass
class MemoryState:
    archived: set[tuple[str, datetime]] = field(default_factory=set)  # the archive's key: (event_id, ts)
    listing_tags: dict[str, tuple[TagIds | None, int, int]] = field(default_factory=dict)  # tags, part, off
    archive: list[ArchiveRow] = field(default_factory=list)
    counts: Deltas = field(default_factory=Deltas)
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)


class MemoryUnitOfWork:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    async def lock_offsets(self, group: str, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {(t, p): self.state.offsets.get((group, t, p), -1) for t, p in partitions}

    async def listing_tags(self, listing_ids: Sequence[str]) -> dict[str, TagIds | None]:
        return {lid: self.state.listing_tags.get(lid, (None, -1, -1))[0] for lid in listing_ids}

    async def archive_and_count(self, rows: Sequence[ArchiveRow]) -> int:
        new = [r for r in rows if (r.event.event_id, r.event.ts) not in self.state.archived]
        self.state.archived.update((r.event.event_id, r.event.ts) for r in new)
        self.state.archive.extend(new)
        self.state.counts.merge(count_rows(new))
        return len(new)

    async def add_counts(self, deltas: Deltas) -> None:
        self.state.counts.merge(deltas)

    async def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), off in offsets.items():
            key = (group, topic, partition)
            self.state.offsets[key] = max(off, self.state.offsets.get(key, -1))

    async def set_listing_tags(self, updates: Sequence[TagUpdate]) -> list[TagUpdate]:
        applied = []
        for u in updates:
            _, part, off = self.state.listing_tags.get(u.listing_id, (None, -1, -1))
            if part != u.partition or off < u.offset:
                self.state.listing_tags[u.listing_id] = (u.tag_ids, u.partition, u.offset)
                applied.append(u)
        return applied

    async def take_pending(self, tags_by_listing: Mapping[str, TagIds]) -> list[tuple[Fact, TagIds]]:
        moved: list[tuple[Fact, TagIds]] = []
        for i, row in enumerate(self.state.archive):
            tags = tags_by_listing.get(row.event.listing_id)
            if row.tag_ids is None and tags is not None:
                self.state.archive[i] = row._replace(tag_ids=tags)
                moved.append((fact_of(row.event), tags))
        return moved


class MemoryFeedbackStore:
    """Same API as the Postgres store; state lives in :attr:`state`."""

    def __init__(self, group: str = "feedback") -> None:
        self.group = group
        self.state = MemoryState()

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[MemoryUnitOfWork]:
        draft = copy.deepcopy(self.state)
        yield MemoryUnitOfWork(draft)
        self.state = draft  # only reached when the body did not raise: commit

    async def record_feedback(
        self, batch: Sequence[Consumed], offsets: Mapping[tuple[str, int], int] | None = None
    ) -> FeedbackResult:
        async with self.unit_of_work() as uow:
            return await handle_feedback(uow, batch, self.group, offsets)

    async def record_tags(
        self, updates: Sequence[TagUpdate], topic: str, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> TagsResult:
        async with self.unit_of_work() as uow:
            return await handle_tags(uow, updates, self.group, topic, offsets)

    def recount(self) -> Deltas:
        """Counts recomputed from the archive alone (what the incremental counts must equal)."""
        out = Deltas()
        for row in self.state.archive:
            out.add(fact_of(row.event), counted_tags(row.tag_ids))
        return out
