"""The one tag-id scheme: Unicode-safe, stable, and the same ids as before for ASCII names."""

from __future__ import annotations

import re
import unicodedata
from itertools import combinations

import pytest

from shared.settings import Settings
from shared.tagmodel.tag_ids import MAX_TAG_ID_LENGTH, attribute_tag_id, category_tag_id, slug
from shared.taxonomy import load_taxonomy


def ascii_slug_before_unicode(text: str) -> str:
    """The scheme the shipped model's vocabulary was built with (services/trainer/labels.py, before)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


CHINESE = ["服装", "女装", "男装", "连衣裙", "上衣", "鞋履", "手表", "珠宝首饰", "运动鞋", "运动服", "儿童", "婴儿"]
ACCENTED = ["Café", "Cafe", "Crème brûlée", "Creme brulee", "Ölive Grün", "Olive Grun", "Señor", "Senor", "Łódź",
            "Lodz"]


def test_ascii_names_keep_the_ids_of_the_shipped_vocabulary() -> None:
    names = ["Clothing", "Women's Clothing", "Lingerie, Sleep & Swimwear", "T-Shirts", "  Ideal  For ", "3/4 Sleeve",
             "Beauty and Personal Care", "USB 2.0", "100% Cotton", "", "---"]  # fmt: skip
    for name in names[:-1]:
        assert slug(name) == ascii_slug_before_unicode(name), name
    assert category_tag_id(["Clothing", "Women's Clothing"]) == "cat:clothing/women-s-clothing"
    assert attribute_tag_id("Ideal For", "Women") == "attr:ideal-for=women"
    assert category_tag_id(["Jewellery", "Necklaces & Chains", "Chains"]) == "cat:jewellery/necklaces-chains/chains"


def test_chinese_and_accented_names_get_distinct_readable_ids() -> None:
    for names in (CHINESE, ACCENTED):
        ids = [slug(n) for n in names]
        assert len(set(ids)) == len(names), ids
    assert slug("连衣裙") == "连衣裙"
    assert slug("Crème brûlée") == "crème-brûlée" and slug("Creme brulee") == "creme-brulee"
    assert category_tag_id(["服装", "女装"]) == "cat:服装/女装" != category_tag_id(["服装", "男装"])
    assert attribute_tag_id("面料", "棉") != attribute_tag_id("面料", "麻")
    # Before, every one of these collapsed to "x" or lost its accented letters.
    assert ascii_slug_before_unicode("女装") == ascii_slug_before_unicode("男装") == "x"


def test_ids_are_stable_across_unicode_forms_case_and_spacing() -> None:
    composed = unicodedata.normalize("NFC", "Crème Brûlée")
    decomposed = unicodedata.normalize("NFD", "Crème Brûlée")
    assert composed != decomposed and slug(composed) == slug(decomposed) == "crème-brûlée"
    assert slug("ＴＳＨＩＲＴ　１０") == slug("tshirt 10") == "tshirt-10"  # full-width forms (NFKC)
    assert slug("STRASSE") == slug("Straße") == "strasse"  # casefold, not lower
    assert slug("कुर्ता") == "कुर्ता"  # combining vowel signs stay inside the word
    assert [slug(n) for n in CHINESE] == [slug(n) for n in CHINESE]  # no per-process randomness (hash seed)
    assert slug("★★★") == slug("★★★") != slug("☆☆☆")


def test_names_without_letters_or_digits_get_a_short_hash_not_a_shared_id() -> None:
    symbols = ["★★★", "☆", "♥", "—", "&"]
    ids = [slug(s) for s in symbols]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"x-[0-9a-f]{8}", i) for i in ids)
    assert slug("") == slug("   ") == "x"


def test_ids_fit_the_event_schema_and_stay_unique_when_cut() -> None:
    deep = ["Vehicles & Parts", "Vehicle Parts & Accessories", "Motor Vehicle Parts", "Motor Vehicle Braking"] * 4
    a, b = category_tag_id([*deep, "Brake Pads"]), category_tag_id([*deep, "Brake Discs"])
    assert len(a) == len(b) == MAX_TAG_ID_LENGTH and a != b
    assert a == category_tag_id([*deep, "Brake Pads"])
    assert len(attribute_tag_id("Key " * 40, "Value " * 40)) == MAX_TAG_ID_LENGTH
    with pytest.raises(TypeError):
        category_tag_id("Clothing")  # a string is not a path


TAX_ROOT = Settings().data_dir / "shopify-taxonomy"


@pytest.mark.skipif(not TAX_ROOT.exists(), reason="shared data not mounted")
def test_every_taxonomy_category_path_gets_its_own_id_in_english_and_chinese() -> None:
    cats = list(load_taxonomy(TAX_ROOT).categories.values())
    ids = {category_tag_id(c.path) for c in cats}
    assert len(ids) == len(cats) and max(map(len, ids)) <= MAX_TAG_ID_LENGTH
    distinct_zh = {c.path_zh for c in cats}  # a few translations repeat verbatim: those ids may repeat too
    assert len({category_tag_id(p) for p in distinct_zh}) == len(distinct_zh)


def test_distinct_letters_never_collide_among_mixed_scripts() -> None:
    names = CHINESE + ACCENTED + ["Αθήνα", "Москва", "東京", "서울", "مصر", "ישראל", "ไทย", "1", "１"]
    def folded(name: str) -> str:
        return unicodedata.normalize("NFKC", name).casefold()

    for a, b in combinations(names, 2):
        assert (slug(a) == slug(b)) == (folded(a) == folded(b)), (a, b)
