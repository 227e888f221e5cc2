"""Explored labels' weights on the recent holdout, computed with a real exported version."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.feedback_labels import Label, LabelKind
from services.trainer.scoring import exploration_weights
from shared.catalog.readers import load_records
from shared.settings import TrainerSettings
from shared.tagmodel.card import load_model_card
from tests.integration.tag_versions import quick_v1  # noqa: F401  (a fixture)

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
