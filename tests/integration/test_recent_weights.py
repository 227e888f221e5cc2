"""Explored labels' weights on the recent holdout, computed with a real exported version."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.trainer.feedback_labels import Label, LabelKind
from services.trainer.scoring import exploration_weights
from shared.catalog.readers import load_records
from shared.settings import TrainerSettings
from shared.tagmodel.card import load_model_card, write_model_card
from tests.integration.tag_versions import copy_version, quick_v1  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration


def test_explored_labels_weigh_between_one_over_the_share_and_the_clip(
    quick_v1: Path, data_dir: Path  # noqa: F811
) -> None:
    records = load_records(data_dir, "flipkart", 40)
    texts = {r.id: r.text for r in records}
    tags = [e.tag_id for e in load_model_card(quick_v1).vocabulary][:3]
    labels = [Label(r.id, tags[i % 3], i % 2, 1.0, LabelKind.WEAK, exploratory=True) for i, r in enumerate(records)]
    labels.append(Label(records[0].id, tags[1], 1, 1.0, LabelKind.WEAK))  # not explored: no weight
    cfg = TrainerSettings(exploration_share=0.3, exploration_max_tags_per_listing=1, exploration_min_score=0.0,
                          gate_explored_max_weight=1_000.0)  # fmt: skip
    weights = exploration_weights(quick_v1, labels, texts, cfg)
    assert set(weights) == {x.key for x in labels if x.exploratory}
    assert all(1 / 0.3 - 1e-9 <= w <= 1_000.0 for w in weights.values())
    # With every tag scored ≥ 0 a candidate, a listing has many: the one-guess cap binds somewhere.
    assert max(weights.values()) > 1 / 0.3 + 1.0
    clipped = exploration_weights(quick_v1, labels, texts, cfg.model_copy(update={"gate_explored_max_weight": 2.0}))
    assert set(clipped.values()) == {2.0}
    assert exploration_weights(quick_v1, labels, texts, cfg.model_copy(update={"exploration_share": 0.0})) == {}


def test_explored_labels_are_weighed_with_the_version_that_tagged_the_listing(
    quick_v1: Path, data_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    # A second version that shows nothing (every threshold 1): all of its tags scored ≥ 0 are
    # candidates, so it explored each far less often than version 1 did.
    blind = copy_version(quick_v1, tmp_path / "models", "tag_model")
    card = load_model_card(blind)
    write_model_card(blind, card.model_copy(update={"thresholds": [1.0] * len(card.thresholds)}))
    records = load_records(data_dir, "flipkart", 20)
    texts = {r.id: r.text for r in records}
    tag = load_model_card(quick_v1).vocabulary[0].tag_id
    cfg = TrainerSettings(exploration_share=0.3, exploration_min_score=0.0, gate_explored_max_weight=1_000.0)
    by_v1 = [Label(r.id, tag, 0, 1.0, LabelKind.WEAK, exploratory=True, model_version="1") for r in records]
    by_blind = [replace(x, model_version="2") for x in by_v1]
    versions = {"1": quick_v1, "2": blind}
    as_champion = exploration_weights(quick_v1, by_v1, texts, cfg)  # no logger known: the champion's count
    assert exploration_weights(quick_v1, by_v1, texts, cfg, logged_by=versions.get) == as_champion
    logged = exploration_weights(quick_v1, by_blind, texts, cfg, logged_by=versions.get)
    assert logged == exploration_weights(blind, by_blind, texts, cfg)
    # more candidates (version 1's shown tags too): each explored less often
    assert all(logged[k] >= as_champion[k] for k in logged) and sum(logged.values()) > sum(as_champion.values())
    by_gone = [replace(x, model_version="9") for x in by_v1]
    gone = exploration_weights(quick_v1, by_gone, texts, cfg, logged_by=versions.get)
    assert gone == as_champion  # a version no longer exported: the champion stands in
