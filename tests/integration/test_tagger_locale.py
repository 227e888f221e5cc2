"""A Chinese listing sent through Kafka gets Chinese-named tags, and explained ones when the tagger is told to.

The real broker and the real Triton (MiniLM encoder; zero-shot taxonomy tags) behind a real
tagger: a ``zh-CN`` listing and an English one go in, their TagEvents come out. The Chinese
listing's tags are named with the taxonomy's zh-CN names under the same ids an English listing
gets; with ``TAGLOOP_TAGGER__EXPLAIN_TAGS`` each tag carries its evidence (TagEvent version 3).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest

from services.simulator.listings import produce_listings
from shared.events import ListingEvent, ListingOp, TagOrigin
from shared.settings import Settings
from tests.integration.test_tagger_faults import TopicTail, tag_events
from tests.support import InProcessTagger

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the zero-shot tagger embeds the taxonomy at start

_CJK = re.compile("[\u4e00-\u9fff]")


def _listing(title: str, locale: str) -> ListingEvent:
    lid = f"zh-{uuid.uuid4().hex[:8]}"
    return ListingEvent(event_id=f"{lid}-1", listing_id=lid, op=ListingOp.CREATED, title=title, locale=locale,
                        ts=datetime.now(UTC))  # fmt: skip


def test_a_chinese_listing_gets_chinese_named_explained_tags(stack_settings: Settings) -> None:
    s = stack_settings.model_copy(update={"tagger": stack_settings.tagger.model_copy(update={"explain_tags": True})})
    zh = _listing("女士纯棉短袖T恤 夏季新款", "zh-CN")
    en = _listing("Women's cotton short sleeve T-shirt", "en")
    tail = TopicTail(s, s.topics.tags)
    try:
        with InProcessTagger(s, group_id=f"tagger-locale-{uuid.uuid4().hex[:6]}", batch_size=8):
            produce_listings(s, [zh, en])
            tail.wait(lambda ms: {e.listing_id for e in tag_events(ms)} >= {zh.listing_id, en.listing_id}, 300,
                      "tags of both listings")  # fmt: skip
    finally:
        tail.close()
    events = {e.listing_id: e for e in tag_events(tail.messages)}
    zh_tags, en_tags = events[zh.listing_id].tags, events[en.listing_id].tags
    assert zh_tags and en_tags
    # Chinese names for the Chinese listing, English ones for the English listing; ids never localised.
    assert all(_CJK.search(t.name) and t.name == t.name_zh for t in zh_tags), [t.name for t in zh_tags]
    assert all(not _CJK.search(t.name) for t in en_tags)
    assert all(t.tag_id.isascii() for t in zh_tags + en_tags)
    # Explained: every tag says where it came from; the event is version 3.
    for event in (events[zh.listing_id], events[en.listing_id]):
        assert event.schema_version == 3
        assert all(t.evidence is not None and t.evidence.origin in (TagOrigin.ZERO_SHOT, TagOrigin.HIERARCHY)
                   for t in event.tags)  # fmt: skip
        picked = [t for t in event.tags if t.evidence and t.evidence.origin == TagOrigin.ZERO_SHOT]
        assert picked and all(t.evidence and t.evidence.similarity is not None for t in picked)
