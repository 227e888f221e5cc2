"""The affinity evaluation on the real Online Retail file, with a cheap stand-in tagger."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.learner.evaluate import evaluate_affinity


def last_word_tags(texts: list[str]) -> list[list[str]]:
    """Stand-in tagger: the product noun is usually the last word ("... T-LIGHT HOLDER")."""
    return [[f"word:{t.split()[-1]}"] if t.split() else [] for t in texts]


@pytest.mark.slow
def test_eval_reports_learner_and_both_baselines(data_dir: Path) -> None:
    result = evaluate_affinity(
        data_dir / "online-retail" / "online_retail.csv.gz",
        last_word_tags,
        kind="lr",
        model_params={"adagrad": True, "learning_rate": 1.0},
        max_train_events=150_000,
    )
    for key in ("recall_at_10", "popularity_recall_at_10", "user_freq_recall_at_10", "ndcg_at_10"):
        assert 0.0 <= result[key] <= result["oracle_recall_at_10"] or key == "ndcg_at_10"
    assert result["users_evaluated"] > 500 and result["train_events"] == 150_000
    assert result["recall_at_10"] > result["popularity_recall_at_10"]
