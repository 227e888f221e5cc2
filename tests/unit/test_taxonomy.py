"""The Shopify taxonomy parser against the real files in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import Settings
from shared.taxonomy import load_taxonomy, normalize_handle

ROOT = Settings().data_dir / "shopify-taxonomy"
pytestmark = pytest.mark.skipif(not ROOT.exists(), reason="shared data not mounted")


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy(ROOT)


def test_category_count_matches_readme(tax) -> None:
    assert len(tax.categories) == 10_595


def test_ancestors_root_first(tax) -> None:
    cat = tax.categories["ap-2-2-1"]
    assert cat.path == ("Animals & Pet Supplies", "Pet Supplies", "Cat Supplies", "Cat Food")
    assert [a.id for a in tax.ancestors("ap-2-2-1")] == ["ap", "ap-2", "ap-2-2"]
    assert cat.depth == 4
    assert cat.parent_id == "ap-2-2"
    assert cat.full_name == "Animals & Pet Supplies > Pet Supplies > Cat Supplies > Cat Food"
    assert tax.ancestors("ap") == []


def test_chinese_names_present_and_aligned(tax) -> None:
    cat = tax.categories["ap-2-2-1"]
    assert cat.name_zh == "猫粮"
    assert len(cat.path_zh) == len(cat.path)
    with_zh = sum(any("\u4e00" <= ch <= "\u9fff" for ch in c.name_zh) for c in tax.categories.values())
    assert with_zh > 0.9 * len(tax.categories)


def test_every_parent_exists_and_roots(tax) -> None:
    for cat in tax.categories.values():
        assert cat.parent_id is None or cat.parent_id in tax.categories
    roots = tax.roots()
    assert all(r.depth == 1 for r in roots)
    assert "ap" in {r.id for r in roots}


def test_attributes_and_category_links(tax) -> None:
    # README: 40,262 category-attribute links.
    assert sum(len(v) for v in tax.category_attributes.values()) == 40_262
    assert {"color", "pattern", "target_gender"} <= tax.allowed_attributes("aa")
    color = tax.attribute_by_name("Color")
    assert color is not None and color.handle == "color"
    assert any(v.name == "Navy" for v in color.values)
    assert color.name_zh != color.name
    linked = {h for hs in tax.category_attributes.values() for h in hs}
    known = sum(h in tax.attributes for h in linked)
    assert known > 0.99 * len(linked)


def test_normalize_handle() -> None:
    assert normalize_handle("target-gender") == normalize_handle("target_gender") == "target_gender"
    assert normalize_handle("Pet Spray/Solution type") == "pet_spray_solution_type"


def test_cached_per_path(tax) -> None:
    assert load_taxonomy(Path(ROOT)) is tax
