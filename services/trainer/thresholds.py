"""Score calibration (one temperature) and per-tag decision thresholds, fitted on the validation split."""

from __future__ import annotations

import numpy as np


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

    Tags with fewer than ``min_positives`` validation examples are too noisy to tune alone and get
    the threshold tuned on all tags pooled. A tag whose target precision is unreachable gets its
    F1-optimal threshold (or the pooled one). Thresholds are never below ``min_threshold``.

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
    out = np.full(probs.shape[1], pooled, dtype=np.float64)
    for j in range(probs.shape[1]):
        rows = known[:, j]
        scores, labels = probs[rows, j], y[rows, j]
        if labels.sum() < min_positives:
            continue
        t = _threshold_for_precision(scores, labels, target_precision, min_threshold)
        if t is None:
            t = _threshold_for_f1(scores, labels, min_threshold)
        if t is not None:
            out[j] = t
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
