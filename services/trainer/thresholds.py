"""Score calibration (one temperature) and per-tag decision thresholds, fitted on the validation split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from services.trainer.evaluate import tag_metrics
from shared.tagmodel.card import VocabEntry
from shared.tagmodel.decide import close_hierarchy, parent_index


def _masked_bce(logits: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    # log(1 + e^x) - y x, computed stably.
    loss = np.logaddexp(0.0, logits) - y * logits
    return float((loss * mask).sum() / max(mask.sum(), 1.0))


def fit_temperature(logits: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Temperature ``T`` minimising the validation log-loss of ``sigmoid(logits / T)``.

    A coarse-to-fine grid search: deterministic, no optimiser state, good to ~1%.
    """
    mask = np.ones_like(y) if mask is None else mask
    best_t, best = 1.0, _masked_bce(logits, y, mask)
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 41))
    for _ in range(2):
        for t in grid:
            loss = _masked_bce(logits / t, y, mask)
            if loss < best - 1e-12:
                best_t, best = float(t), loss
        grid = best_t * np.exp(np.linspace(-0.1, 0.1, 21))
    return round(best_t, 6)


def _threshold_for_precision(
    scores: np.ndarray, labels: np.ndarray, target_precision: float, min_threshold: float
) -> float | None:
    """Lowest threshold whose precision on (scores, labels) reaches the target; None if none does."""
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    tp = np.cumsum(lab)
    precision = tp / np.arange(1, len(s) + 1)
    # Only cut between distinct scores: a threshold cannot split ties.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero(last_of_run & (precision >= target_precision) & (lab > 0) & (s >= min_threshold))
    if ok.size == 0:
        return None
    return float(s[ok[-1]])


def _threshold_for_f1(scores: np.ndarray, labels: np.ndarray, min_threshold: float) -> float | None:
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    tp = np.cumsum(lab)
    k = np.arange(1, len(s) + 1)
    f1 = 2 * tp / (k + lab.sum())
    valid = np.r_[s[1:] != s[:-1], True] & (s >= min_threshold) & (lab > 0)
    if not valid.any() or lab.sum() == 0:
        return None
    best = int(np.flatnonzero(valid)[np.argmax(f1[valid])])
    return float(s[best])


def tune_thresholds(
    probs: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray | None = None,
    target_precision: float = 0.8,
    min_positives: int = 3,
    min_threshold: float = 0.1,
) -> np.ndarray:
    """Per-tag thresholds: the lowest score with validation precision >= ``target_precision``.

    Tags with fewer than ``min_positives`` validation examples are too noisy to tune alone and keep
    ``min_threshold`` (the head's own boundary, as served). They got the threshold tuned on all
    tags pooled until a demo refit showed what that does to thin tags: a pooled cut of ~0.72 took
    the recall of tags learned from 3-4 listings (Gardening Tools 0.98 → 0.90 golden F1, men's
    clothing 0.70 → 0.52), since the precision curve of well-known tags says nothing about theirs.
    A tag whose target precision is unreachable gets its F1-optimal threshold (or the pooled one).
    Thresholds are never below ``min_threshold``.

    Parameters
    ----------
    probs, y : np.ndarray
        ``[n, n_tags]`` calibrated probabilities and 0/1 targets of the validation split.
    mask : np.ndarray or None
        ``[n, n_tags]``; 0 where a target is unknown (excluded).

    Returns
    -------
    np.ndarray
        ``float64 [n_tags]`` thresholds, rounded down to 6 decimals.
    """
    mask = np.ones_like(y) if mask is None else mask
    known = mask > 0
    pooled = _threshold_for_precision(probs[known], y[known], target_precision, min_threshold)
    if pooled is None:
        pooled = 0.5
    out = np.full(probs.shape[1], min_threshold, dtype=np.float64)
    for j in range(probs.shape[1]):
        rows = known[:, j]
        scores, labels = probs[rows, j], y[rows, j]
        if labels.sum() < min_positives:
            continue
        t = _threshold_for_precision(scores, labels, target_precision, min_threshold)
        if t is None:
            t = _threshold_for_f1(scores, labels, min_threshold)
        out[j] = pooled if t is None else t
    # Round down, not to nearest: rounding up would drop the very example the cut was placed at.
    return np.floor(np.clip(out, min_threshold, 1.0) * 1e6) / 1e6


def fit_zero_shot(similarities: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Calibrate zero-shot scores: ``P(tag) = sigmoid(scale * (cosine - threshold))``.

    Fitted by one-feature logistic regression on the validation listings against the tags the model
    knows, used as stand-ins for cold-start tags (their names embedded like a new tag's would be).

    Returns
    -------
    (float, float)
        ``(threshold, scale)``, rounded to 6 decimals.
    """
    from sklearn.linear_model import LogisticRegression

    known = np.ones_like(y, dtype=bool) if mask is None else mask > 0
    x = similarities[known].reshape(-1, 1)
    target = y[known]
    if target.min() == target.max():
        return 0.5, 20.0
    clf = LogisticRegression(C=1e4, max_iter=1000).fit(x, target)
    scale = float(clf.coef_[0, 0])
    if scale <= 0:  # similarity does not predict the tag at all: make zero-shot near-silent
        return 1.0, 20.0
    return round(-float(clf.intercept_[0]) / scale, 6), round(scale, 6)


def validation_objective(metrics: dict[str, Any]) -> float:
    """Mean of category micro-F1, category macro-F1 and (where any) attribute micro-F1.

    What ``tagloop eval tags`` compares with the baseline, so what rule choices on validation maximise.
    """
    parts = [float(metrics["micro_f1"]), float(metrics["macro_f1"])]
    if "attributes" in metrics:
        parts.append(float(metrics["attributes"]["micro_f1"]))
    return float(np.mean(parts))


def choose_thresholds(
    probs: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    vocab: Sequence[VocabEntry],
    target_precision: float = 0.8,
    min_positives: int = 3,
    min_threshold: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-tag thresholds tuned for precision (:func:`tune_thresholds`), or every tag at the head's
    own boundary (``min_threshold``), whichever decides the validation side better.

    Judged by cross-fitting, because thresholds tuned on a set always look best on that same set:
    the validation rows are cut in two halves, thresholds are tuned on one half and both rules
    are scored (:func:`validation_objective`, decisions closed under the hierarchy as served) on
    the other, and the other way round. Ties go to the boundary (the simpler rule). Measured on
    five catalogs (``bench/results/catalogs.md``): tuned thresholds looked better on the
    validation rows they were tuned on and lost on the test side in every comparison.

    Returns
    -------
    (thresholds, report)
        ``float64 [n_tags]`` and ``{"rule": "boundary" | "tuned", "objective_tuned": .., "objective_boundary": ..}``.
    """
    parents = parent_index(vocab)
    order = np.random.default_rng(seed).permutation(len(probs))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    scores = {"tuned": 0.0, "boundary": 0.0}
    for tune_on, judge_on in (halves, halves[::-1]):
        if len(tune_on) == 0 or len(judge_on) == 0:
            continue
        tuned = tune_thresholds(probs[tune_on], y[tune_on], mask[tune_on], target_precision, min_positives,
                                min_threshold)  # fmt: skip
        for rule, cut in (("tuned", tuned), ("boundary", np.full(probs.shape[1], min_threshold))):
            pred, _ = close_hierarchy(probs[judge_on] >= cut, probs[judge_on], parents)
            scores[rule] += validation_objective(tag_metrics(y[judge_on], pred, mask[judge_on], vocab)) / 2
    rule = "tuned" if scores["tuned"] > scores["boundary"] else "boundary"
    if rule == "tuned":
        thresholds = tune_thresholds(probs, y, mask, target_precision, min_positives, min_threshold)
    else:
        thresholds = np.full(probs.shape[1], min_threshold, dtype=np.float64)
    report = {"rule": rule, "objective_tuned": round(scores["tuned"], 4),
              "objective_boundary": round(scores["boundary"], 4)}  # fmt: skip
    return thresholds, report
