"""Zero-shot tags are not random: Flipkart apparel-like listings land under Apparel & Accessories."""

from __future__ import annotations

import pytest

from services.simulator.listings import flipkart_records
from shared.catalog.records import CATEGORY_SEP
from shared.encoder import MiniLMEncoder
from shared.tagmodel.zero_shot import ZeroShotTagger
from shared.taxonomy import load_taxonomy

APPAREL_LIKE = {"Footwear", "Clothing", "Jewellery", "Watches"}


@pytest.mark.slow  # 20 s: keeps the default suite under 15 minutes
def test_zero_shot_top_level_matches_obvious_shopify_root(data_dir) -> None:  # type: ignore[no-untyped-def]
    records = list(flipkart_records(data_dir, 500))
    chosen = [r for r in records if r.labels and r.labels[0].split(CATEGORY_SEP)[0] in APPAREL_LIKE]
    assert len(chosen) > 100
    encoder = MiniLMEncoder()
    tagger = ZeroShotTagger.build(load_taxonomy(data_dir / "shopify-taxonomy"), encoder.encode)
    tags = tagger.tag(encoder.encode([r.text for r in chosen]))
    roots = [next(t.name for t in ts if t.taxonomy_id and "-" not in t.taxonomy_id) for ts in tags]
    share = sum(root == "Apparel & Accessories" for root in roots) / len(roots)
    assert share >= 0.80, f"only {share:.0%} of {len(roots)} apparel-like listings under Apparel & Accessories"
