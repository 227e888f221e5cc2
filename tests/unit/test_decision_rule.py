"""The decision rule chosen on validation by cross-fitting: tuned thresholds or the head's boundary."""

from __future__ import annotations

import numpy as np

from services.trainer.thresholds import choose_thresholds, tune_thresholds
from shared.events import TagKind
from shared.tagmodel.card import VocabEntry

VOCAB = [VocabEntry(tag_id=f"cat:t{j}", name=f"t{j}", kind=TagKind.CATEGORY) for j in range(4)]


def _world(rng: np.random.Generator, n: int, negatives_above_boundary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores of 4 tags: positives spread over (0.5, 1); negatives below 0.5, or (if asked) a third
    of them in (0.5, 0.7) where a precision-tuned cut removes them."""
    y = (rng.random((n, 4)) < 0.3).astype(np.float32)
    probs = np.where(y > 0, rng.uniform(0.5, 1.0, (n, 4)), rng.uniform(0.0, 0.5, (n, 4)))
    if negatives_above_boundary:
        noisy = (y == 0) & (rng.random((n, 4)) < 0.33)
        probs = np.where(noisy, rng.uniform(0.5, 0.7, (n, 4)), probs)
        probs = np.where(y > 0, rng.uniform(0.7, 1.0, (n, 4)), probs)
    return probs, y


def test_the_boundary_is_kept_where_tuning_only_fits_the_validation_rows() -> None:
    probs, y = _world(np.random.default_rng(0), 120, negatives_above_boundary=False)
    mask = np.ones_like(y)
    tuned = tune_thresholds(probs, y, mask, 0.8, 3, 0.5)
    assert (tuned > 0.5).any(), "tuning raises cuts to the lowest validation positive"
    thresholds, report = choose_thresholds(probs, y, mask, VOCAB, 0.8, 3, 0.5)
    assert report["rule"] == "boundary" and report["objective_boundary"] > report["objective_tuned"]
    assert np.all(thresholds == 0.5)


def test_tuned_thresholds_are_kept_where_they_cut_real_false_positives() -> None:
    probs, y = _world(np.random.default_rng(1), 200, negatives_above_boundary=True)
    thresholds, report = choose_thresholds(probs, y, np.ones_like(y), VOCAB, 0.8, 3, 0.5)
    assert report["rule"] == "tuned" and report["objective_tuned"] > report["objective_boundary"]
    assert np.array_equal(thresholds, tune_thresholds(probs, y, np.ones_like(y), 0.8, 3, 0.5))
    assert np.all(thresholds > 0.55)
