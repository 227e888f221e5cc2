from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from services.tagger.core import (
    RawRecord,
    SeenContent,
    content_hash,
    next_offsets,
    plan_batch,
    tag_record,
    tombstone_record,
)
from services.tagger.inference import ModelStamp
from services.tagger.pipeline import TaggerPipeline
from shared.events import DeadLetter, ListingEvent, Tag, TagEvent, decode, encode
from shared.settings import Settings

TS = datetime(2026, 1, 1, tzinfo=UTC)


def listing(lid: str, op: str = "created", title: str = "Red cotton shirt", eid: str | None = None) -> ListingEvent:
    return ListingEvent(event_id=eid or f"e-{lid}-{op}-{title}", listing_id=lid, op=op, title=title, ts=TS)


def rec(offset: int, value: bytes | None, key: bytes | None = None, partition: int = 0) -> RawRecord:
    return RawRecord("listings", partition, offset, key, value)


def test_plan_routes_valid_deleted_and_rejected_records() -> None:
    records = [
        rec(0, encode(listing("a")), b"a"),
        rec(1, b"{not json"),
        rec(2, orjson.dumps({"event_id": "x", "listing_id": "b", "op": "created", "ts": "2026-01-01T00:00:00Z"})),
        rec(3, encode(listing("c")), b"not-c"),
        rec(4, None),
        rec(5, encode(listing("a", op="deleted", title="")), b"a"),
    ]
    plan = plan_batch(records, SeenContent(), "v1")
    assert [t.listing.listing_id for t in plan.to_tag] == ["a"]
    assert [r.record.offset for r in plan.rejected] == [1, 2, 3, 4]
    reasons = [str(r.error) for r in plan.rejected]
    assert "title must be non-empty" in reasons[1]
    assert "is not the event's listing_id" in reasons[2]
    assert [lst.listing_id for _, lst in plan.deleted] == ["a"]


def test_unchanged_update_is_skipped_until_text_or_model_changes() -> None:
    seen = SeenContent()
    first = plan_batch([rec(0, encode(listing("a")))], seen, "v1")
    same = plan_batch([rec(1, encode(listing("a", op="updated")))], seen, "v1")
    changed = plan_batch([rec(2, encode(listing("a", op="updated", title="Blue shirt")))], seen, "v1")
    new_model = plan_batch([rec(3, encode(listing("a", op="updated", title="Blue shirt")))], seen, "v2")
    assert len(first.to_tag) == 1
    assert same.unchanged and not same.to_tag
    assert len(changed.to_tag) == 1 and len(new_model.to_tag) == 1


def test_seen_content_is_bounded() -> None:
    seen = SeenContent(capacity=2)
    for lid in "abc":
        seen.remember(lid, "h")
    assert not seen.unchanged("a", "h") and seen.unchanged("c", "h")


def test_tag_record_is_deterministic_apart_from_ts() -> None:
    item = plan_batch([rec(0, encode(listing("a")))], SeenContent(), "v1").to_tag[0]
    tags = [Tag(tag_id="shopify:aa", name="Apparel", kind="category", score=0.9, source="zero-shot")]
    one = decode(TagEvent, tag_record("t", item, tags, "m", "v1").value)
    two = decode(TagEvent, tag_record("t", item, tags, "m", "v1").value)
    assert one.model_dump(exclude={"ts"}) == two.model_dump(exclude={"ts"})
    assert one.source_event_id == item.listing.event_id
    assert one.content_hash == content_hash(item.listing)


def test_tombstone_has_listing_key_and_no_value() -> None:
    out = tombstone_record("tags", listing("a", op="deleted", title=""))
    assert out.key == b"a" and out.value is None


def test_next_offsets_is_last_offset_plus_one_per_partition() -> None:
    records = [rec(5, b"", partition=0), rec(9, b"", partition=1), rec(6, b"", partition=0)]
    assert next_offsets(records) == {("listings", 0): 7, ("listings", 1): 10}


class _TooManyTags:
    """A model version whose output breaks the event contract (more tags than a TagEvent holds)."""

    stamp = ModelStamp("tag_model", "9")

    async def tag(self, texts: Sequence[str], listing_ids: Sequence[str] | None = None) -> list[list[Tag]]:
        many = [Tag(tag_id=f"cat:{i}", name=str(i), kind="category", score=0.9, source="model") for i in range(1001)]
        one = [Tag(tag_id="cat:ok", name="ok", kind="category", score=0.9, source="model")]
        return [many if "poison" in text else one for text in texts]

    async def ready(self) -> bool:
        return True


def test_an_output_that_breaks_the_event_contract_dead_letters_its_listing_not_the_tagger() -> None:
    """A version that tagged a listing with 1,176 tags once crashed the tagger (TagEvent allows 1,000)."""
    pipeline = TaggerPipeline(Settings(), _TooManyTags())
    records = [rec(0, encode(listing("a", title="poison listing")), b"a"),
               rec(1, encode(listing("b", title="a fine listing")), b"b")]
    result = asyncio.run(pipeline._process(records))
    by_topic = {r.topic: r for r in result.records}
    letter = decode(DeadLetter, by_topic["dead-letter"].value or b"")
    assert letter.offset == 0 and "1000" in letter.reason
    assert decode(TagEvent, by_topic["listing-tags"].value or b"").listing_id == "b"
