"""Temperature scaling and per-tag thresholds for a target precision."""

from __future__ import annotations

import numpy as np

from services.trainer.evaluate import prf
from services.trainer.thresholds import fit_temperature, fit_zero_shot, tune_thresholds


def test_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 3))
    y = (rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(float)
    t = fit_temperature(true_logits * 3.0, y)  # a model 3x overconfident
    assert 2.6 < t < 3.4


def test_thresholds_reach_target_precision_with_max_recall() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    y = (rng.random((n, 2)) < 0.3).astype(float)
    probs = np.clip(0.35 * y + rng.random((n, 2)) * 0.65, 0, 1)
    th = tune_thresholds(probs, y, target_precision=0.9)
    for j in range(2):
        pred = probs[:, j] >= th[j]
        precision = (pred & (y[:, j] > 0)).sum() / pred.sum()
        assert precision >= 0.9
        # Any lower distinct threshold would fall below the target.
        lower = np.sort(np.unique(probs[:, j][probs[:, j] < th[j]]))[-1]
        pred_low = probs[:, j] >= lower
        assert (pred_low & (y[:, j] > 0)).sum() / pred_low.sum() < 0.9 or y[pred_low & ~pred, j].sum() == 0


def test_rare_tags_keep_the_boundary_and_mask_is_respected() -> None:
    """Defect: a tag with too few validation positives got the cut pooled over all tags (~0.72 on a
    demo refit), which took the recall of tags learned from a handful of listings."""
    rng = np.random.default_rng(2)
    probs = rng.random((500, 3))
    y = (probs > 0.6).astype(float)
    probs[:, 2] *= 0.5  # a thin tag's scores: all under the boundary
    y[:, 2] = 0
    y[0, 2] = 1  # one positive: too few to tune alone
    mask = np.ones_like(y)
    mask[:, 1] = 0  # unknown everywhere
    th = tune_thresholds(probs, y, mask, target_precision=0.95, min_positives=3, min_threshold=0.5)
    assert th[1] == th[2] == 0.5  # both keep the head's own boundary, not the pooled cut
    assert th[0] > 0.5  # the tag with evidence is tuned


def test_prf_micro_macro() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0]], dtype=float)
    pred = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    m = prf(y, pred)
    # tp=2, fp=1, fn=1 -> micro 2*2/(4+2)
    assert abs(m["micro_f1"] - round(4 / 6, 4)) < 1e-9
    assert abs(m["macro_f1"] - round((1 + 1 + 0) / 3, 4)) < 1e-9


def test_zero_shot_calibration_recovers_the_logistic_curve() -> None:
    rng = np.random.default_rng(4)
    sims = rng.uniform(-0.2, 0.9, size=(3000, 4))
    p = 1 / (1 + np.exp(-12.0 * (sims - 0.45)))
    y = (rng.random(sims.shape) < p).astype(float)
    threshold, scale = fit_zero_shot(sims, y)
    assert abs(threshold - 0.45) < 0.03
    assert 9.0 < scale < 15.0
