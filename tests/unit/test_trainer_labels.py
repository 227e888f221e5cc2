"""Category paths, attribute normalisation, vocabulary and Shopify mapping."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer.labels import build_vocabulary, label_matrix, map_to_taxonomy
from shared.catalog.flipkart import category_path_from_flipkart_tree, normalize_attribute, parse_flipkart_specifications
from shared.catalog.records import Record
from shared.events import TagKind
from shared.settings import Settings
from shared.taxonomy import load_taxonomy

TREE = (
    "[\"Clothing >> Women's Clothing >> Lingerie, Sleep & Swimwear >> Shorts >> Alisha Shorts "
    ">> Alisha Solid Women's Cycling Shorts\"]"
)
SPEC = (
    '{"product_specification"=>[{"key"=>"Number of Contents in Sales Package", "value"=>"Pack of 3"}, '
    '{"key"=>"Fabric", "value"=>"Cotton Lycra"}, {"key"=>"Pattern", "value"=>"Solid"}, '
    '{"key"=>"Ideal For", "value"=>"Women\'s"}, {"value"=>"Gentle Machine Wash"}, '
    '{"key"=>"Style Code", "value"=>"ALTHT_3P_21"}, {"key"=>"Occasion", "value"=>"Casual, Party"}]}'
)


def test_tree_drops_the_product_name_leaf() -> None:
    path = category_path_from_flipkart_tree(TREE)
    assert path == ("Clothing", "Women's Clothing", "Lingerie, Sleep & Swimwear", "Shorts", "Alisha Shorts")
    # A one-element tree is only a product name: no category.
    assert category_path_from_flipkart_tree('["Eternal Gandhi Super Series Crystal Paper Weight..."]') == ()


def test_specifications_are_normalised() -> None:
    pairs = parse_flipkart_specifications(SPEC)
    assert ("Fabric", "Cotton Lycra") in pairs
    assert ("Pattern", "Solid") in pairs
    assert ("Ideal For", "Women") in pairs  # "Women's" -> "Women"
    assert ("Occasion", "Casual") in pairs and ("Occasion", "Party") in pairs  # lists split
    keys = {k for k, _ in pairs}
    assert "Style Code" not in keys and "Number of Contents in Sales Package" not in keys
    assert (
        normalize_attribute("ideal  for", "Womens")
        == normalize_attribute("Ideal For", "women")
        == [("Ideal For", "Women")]
    )
    assert normalize_attribute("Water Resistant", "No") == []
    assert normalize_attribute("Colour", "navy") == [("Color", "Navy")]


def _records() -> list[Record]:
    recs = []
    for i in range(6):
        recs.append(Record(f"a{i}", f"shorts {i}", ("Clothing > Women > Shorts > Brand X", "Fabric=Cotton"), True))
        recs.append(Record(f"b{i}", f"watch {i}", ("Watches > Wrist Watches",), False))
    recs.append(Record("c", "rare", ("Clothing > Women > Rare",), False))
    return recs


def test_vocabulary_is_closed_under_ancestors_and_filters_rare_tags() -> None:
    vocab = build_vocabulary(_records(), max_depth=3, min_count=5, min_attribute_count=5)
    ids = [v.tag_id for v in vocab]
    assert len(ids) == len(set(ids))
    by_id = {v.tag_id: v for v in vocab}
    assert "cat:clothing/women/shorts" in by_id
    assert "cat:clothing/women/shorts/brand-x" not in by_id  # deeper than max_depth
    assert "cat:clothing/women/rare" not in by_id  # one example
    for v in vocab:
        if v.kind == TagKind.CATEGORY and v.parent is not None:
            assert v.parent in by_id and by_id[v.parent].level == v.level - 1
    assert by_id["attr:fabric=cotton"].kind == TagKind.ATTRIBUTE
    assert by_id["cat:clothing"].support == 7


def test_label_matrix_includes_ancestors_and_masks_unknown_attributes() -> None:
    recs = _records()
    vocab = build_vocabulary(recs)
    y, m = label_matrix(recs, vocab)
    col = {v.tag_id: j for j, v in enumerate(vocab)}
    assert y[0, col["cat:clothing"]] == y[0, col["cat:clothing/women/shorts"]] == 1
    assert y[0, col["attr:fabric=cotton"]] == 1 and m[0, col["attr:fabric=cotton"]] == 1
    # The watch has no specifications: its attribute targets are unknown, not negative.
    assert m[1, col["attr:fabric=cotton"]] == 0 and m[1, col["cat:clothing"]] == 1
    assert y[1].sum() == 2
    assert np.all((y == 0) | (y == 1))


TAX_ROOT = Settings().data_dir / "shopify-taxonomy"


@pytest.mark.skipif(not TAX_ROOT.exists(), reason="shared data not mounted")
def test_shopify_mapping_adds_ids_chinese_names_and_allowed_attributes() -> None:
    recs = [
        Record(
            str(i),
            f"t{i}",
            ("Clothing > Women's Clothing > Tops > X", "Fabric=Cotton", "Ideal For=Women"),
            True,
        )
        for i in range(5)
    ] + [Record(f"w{i}", f"w{i}", ("Watches > Wrist Watches > Y",), False) for i in range(5)]
    tax = load_taxonomy(TAX_ROOT)
    vocab = {v.tag_id: v for v in map_to_taxonomy(build_vocabulary(recs), tax)}
    clothing = vocab["cat:clothing"]
    assert clothing.taxonomy_id == "aa-1" and clothing.name_zh == tax.categories["aa-1"].name_zh
    assert clothing.allowed_attributes is not None and "fabric" in clothing.allowed_attributes
    watches = vocab["cat:watches"]
    assert watches.taxonomy_id is not None and tax.categories[watches.taxonomy_id].name == "Watches"
    fabric = vocab["attr:fabric=cotton"]
    assert fabric.attribute_handle == "fabric" and fabric.taxonomy_id == "fabric__cotton"
    assert fabric.name_zh and fabric.name_zh != fabric.name
    assert vocab["attr:ideal-for=women"].taxonomy_id == "target-gender__female"


@pytest.mark.skipif(not TAX_ROOT.exists(), reason="shared data not mounted")
def test_shopify_mapping_rejects_same_named_categories_of_unrelated_branches() -> None:
    paths = (
        "Jewellery > Necklaces & Chains > Chains > X",
        "Jewellery > Necklaces & Chains > Necklaces > X",
        "Beauty and Personal Care > Makeup > Nails > X",
        "Beauty and Personal Care > Hair Care > X",
    )
    recs = [Record(f"{p}{i}", f"t{i}", (p,), False) for p in paths for i in range(5)]
    tax = load_taxonomy(TAX_ROOT)
    vocab = {v.tag_id: v for v in map_to_taxonomy(build_vocabulary(recs), tax)}
    # Hardware chains and nails share the leaf name only; jewellery maps under Apparel, makeup under Health.
    assert vocab["cat:jewellery/necklaces-chains/chains"].taxonomy_id is None
    necklaces = vocab["cat:jewellery/necklaces-chains/necklaces"].taxonomy_id
    assert necklaces is not None and tax.categories[necklaces].path[0] == "Apparel & Accessories"
    assert vocab["cat:beauty-and-personal-care/makeup/nails"].taxonomy_id is None
    # "Beauty & Personal Care" exists only under Services: a product category never maps there.
    assert vocab["cat:beauty-and-personal-care"].taxonomy_id is None
    hair = vocab["cat:beauty-and-personal-care/hair-care"].taxonomy_id
    assert hair is not None and tax.categories[hair].path[0] == "Health & Beauty"
