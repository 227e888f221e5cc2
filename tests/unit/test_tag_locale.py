"""A listing's locale reaches its tags (issue 11 §3): Chinese names for zh-* listings, the same ids for all."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from services.tagger.core import RawRecord, ToTag, tag_record
from shared.events import ListingEvent, Tag, TagEvent, TagKind, TagSource, decode
from shared.tagmodel.localize import localize_tags
from shared.tagmodel.zero_shot import ZeroShotTagger, is_chinese, label_text
from shared.taxonomy import Category

CATS = [
    Category("aa", ("Apparel & Accessories",), ("服饰与配饰",)),
    Category("aa-1", ("Apparel & Accessories", "Clothing"), ("服饰与配饰", "服装")),
    Category("el", ("Electronics",), ("电子产品",)),
]


@pytest.mark.parametrize(("locale", "chinese"), [("zh", True), ("zh-CN", True), ("zh_Hant_TW", True), ("ZH-sg", True),
                                                 ("en", False), ("en-US", False), ("", False), ("zhx", False)])
def test_chinese_locales(locale: str, chinese: bool) -> None:
    assert is_chinese(locale) is chinese


def test_a_chinese_zero_shot_tagger_embeds_the_zh_names_and_names_its_tags_in_chinese_with_the_same_ids() -> None:
    assert label_text(CATS[1], "zh-CN") == "服饰与配饰 > 服装"
    assert label_text(CATS[1]) == "Apparel & Accessories > Clothing"
    seen: dict[str, list[str]] = {}

    def encode(locale: str):  # type: ignore[no-untyped-def]
        def run(texts: list[str]) -> np.ndarray:
            seen[locale] = texts
            return np.eye(len(texts), dtype=np.float32)
        return run

    listing = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    en = ZeroShotTagger.build(_taxonomy(), encode("en")).tag(listing)[0]
    zh = ZeroShotTagger.build(_taxonomy(), encode("zh-CN"), locale="zh-CN").tag(listing)[0]
    assert seen["zh-CN"] == ["服饰与配饰", "服饰与配饰 > 服装", "电子产品"]
    assert [t.tag_id for t in zh] == [t.tag_id for t in en]
    assert [t.tag_id for t in zh] == ["cat:apparel-accessories", "cat:apparel-accessories/clothing"]
    assert [t.name for t in zh] == ["服饰与配饰", "服饰与配饰 > 服装"]
    assert [t.name for t in en] == ["Apparel & Accessories", "Apparel & Accessories > Clothing"]


def _taxonomy():  # type: ignore[no-untyped-def]
    from shared.taxonomy import Taxonomy

    return Taxonomy({c.id: c for c in CATS})


def _item(locale: str) -> ToTag:
    listing = ListingEvent(event_id="e1", listing_id="l1", op="created", title="纯棉女士T恤", locale=locale,
                           ts=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    return ToTag(RawRecord("listings", 0, 7, b"l1", b""), listing, "h", listing.title)


TAGS = [
    Tag(tag_id="cat:apparel-accessories/clothing", name="Apparel & Accessories > Clothing", kind=TagKind.CATEGORY,
        score=0.9, source=TagSource.ZERO_SHOT, name_zh="服饰与配饰 > 服装", taxonomy_id="aa-1"),
    Tag(tag_id="cat:服装", name="服装", kind=TagKind.CATEGORY, score=0.8, source=TagSource.MODEL),
    Tag(tag_id="attr:color=red", name="Color: Red", kind=TagKind.ATTRIBUTE, score=0.7, source=TagSource.MODEL),
]


def test_the_tag_record_of_a_chinese_listing_names_its_tags_in_chinese() -> None:
    zh = decode(TagEvent, tag_record("listing-tags", _item("zh-CN"), TAGS, "m", "1").value)
    en = decode(TagEvent, tag_record("listing-tags", _item("en"), TAGS, "m", "1").value)
    assert [t.tag_id for t in zh.tags] == [t.tag_id for t in en.tags] == [t.tag_id for t in TAGS]
    assert [t.name for t in zh.tags] == ["服饰与配饰 > 服装", "服装", "Color: Red"]  # no Chinese name: kept
    assert en.tags == TAGS
    assert zh.schema_version == en.schema_version == 2


def test_localize_is_a_no_op_outside_chinese() -> None:
    assert localize_tags(TAGS, "fr-FR") == TAGS and localize_tags(TAGS, None) == TAGS
