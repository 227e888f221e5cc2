"""When to start a training job: the trainer's pure trigger rules (no I/O).

The service reads a :class:`TriggerSnapshot` from Postgres (last job, label volume, feedback
rates of two windows, listing embeddings of two windows) and calls :func:`evaluate_triggers`.
A fired trigger **starts an evaluation job, never a deployment**: the candidate it produces
still has to pass the gate and a canary.

Rules (thresholds in :class:`~shared.settings.TrainerSettings`):

* **cooldown** -- nothing fires within ``cooldown_h`` of the last job's start (and the costly
  drift test is not even run);
* **schedule** -- ``schedule_interval_h`` since the last job (or no job yet), provided at least
  ``schedule_min_weighted_labels`` new weighted labels exist;
* **volume** -- at least ``volume_weighted_labels`` new weighted labels since the last job;
* **acceptance drift** -- the merchants' acceptance rate of the recent window is more than
  ``acceptance_drop_tolerance`` (absolute) below the reference window's;
* **CTR drift** -- the recent CTR is more than ``ctr_drop_tolerance`` (relative) below the reference;
* **embedding drift** -- an MMD² permutation test (:func:`mmd_test`) between the listing
  embeddings of the two windows has a p-value below ``mmd_p_value``.

Each rate needs its minimum count in *both* windows; otherwise the rule stays silent.

Examples
--------
>>> from datetime import UTC, datetime
>>> from shared.settings import TrainerSettings
>>> now = datetime(2026, 1, 2, tzinfo=UTC)
>>> snap = TriggerSnapshot(now=now, last_job_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
...                        weighted_labels_since_last_job=800.0)
>>> [t.kind.value for t in evaluate_triggers(snap, TrainerSettings())]
['volume']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import numpy as np

from shared.settings import TrainerSettings


class TriggerKind(StrEnum):
    SCHEDULE = "schedule"
    VOLUME = "volume"
    ACCEPTANCE_DRIFT = "acceptance_drift"
    CTR_DRIFT = "ctr_drift"
    EMBEDDING_DRIFT = "embedding_drift"


@dataclass(frozen=True)
class WindowStats:
    """Feedback counts of one time window (all listings and tags together)."""

    impressions: int = 0
    clicks: int = 0
    accepts: int = 0
    rejects: int = 0

    def __post_init__(self) -> None:
        if min(self.impressions, self.clicks, self.accepts, self.rejects) < 0:
            raise ValueError(f"negative count in {self!r}")

    @property
    def judgements(self) -> int:
        return self.accepts + self.rejects

    @property
    def acceptance_rate(self) -> float:
        """Accepts / (accepts + rejects); NaN without judgements."""
        return self.accepts / self.judgements if self.judgements else math.nan

    @property
    def ctr(self) -> float:
        """Clicks / impressions; NaN without impressions."""
        return self.clicks / self.impressions if self.impressions else math.nan


@dataclass(frozen=True)
class TriggerSnapshot:
    """Everything the trigger rules read, gathered by the service at ``now``.

    ``reference`` / ``recent`` cover ``drift_reference_window_h`` / ``drift_recent_window_h``;
    the embedding arrays are ``(n, d)`` samples of listings seen in the same two windows.
    ``last_trigger`` (what started the last job) is context for logs; no rule reads it.
    """

    now: datetime
    last_job_at: datetime | None = None
    last_trigger: str | None = None
    weighted_labels_since_last_job: float = 0.0
    reference: WindowStats | None = None
    recent: WindowStats | None = None
    reference_embeddings: np.ndarray | None = None
    recent_embeddings: np.ndarray | None = None


@dataclass(frozen=True)
class Trigger:
    """A fired rule: why a job should start, with the figures that made it fire."""

    kind: TriggerKind
    reason: str
    figures: Mapping[str, float] = field(default_factory=dict)


def cooldown_left(snapshot: TriggerSnapshot, settings: TrainerSettings) -> timedelta:
    """Time until triggers may fire again (zero when not cooling down).

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, 10, tzinfo=UTC)
    >>> cooldown_left(TriggerSnapshot(now=t, last_job_at=t - timedelta(hours=2)), TrainerSettings(cooldown_h=6))
    datetime.timedelta(seconds=14400)
    """
    if snapshot.last_job_at is None:
        return timedelta(0)
    left = snapshot.last_job_at + timedelta(hours=settings.cooldown_h) - snapshot.now
    return max(left, timedelta(0))


def evaluate_triggers(snapshot: TriggerSnapshot, settings: TrainerSettings) -> list[Trigger]:
    """The triggers that fire now, cheapest rule first; empty while cooling down."""
    if cooldown_left(snapshot, settings) > timedelta(0):
        return []
    fired = [
        t
        for t in (
            _schedule(snapshot, settings),
            _volume(snapshot, settings),
            _acceptance_drift(snapshot, settings),
            _ctr_drift(snapshot, settings),
        )
        if t is not None
    ]
    embedding = _embedding_drift(snapshot, settings)
    if embedding is not None:
        fired.append(embedding)
    return fired


def _schedule(s: TriggerSnapshot, cfg: TrainerSettings) -> Trigger | None:
    labels = s.weighted_labels_since_last_job
    if labels < cfg.schedule_min_weighted_labels:
        return None
    if s.last_job_at is None:
        return Trigger(
            TriggerKind.SCHEDULE, f"no job yet and {labels:.0f} weighted labels", {"weighted_labels": labels}
        )
    hours = (s.now - s.last_job_at).total_seconds() / 3600.0
    if hours < cfg.schedule_interval_h:
        return None
    reason = f"{hours:.1f} h since the last job (interval {cfg.schedule_interval_h:g} h), {labels:.0f} weighted labels"
    return Trigger(TriggerKind.SCHEDULE, reason, {"hours_since_last_job": hours, "weighted_labels": labels})


def _volume(s: TriggerSnapshot, cfg: TrainerSettings) -> Trigger | None:
    labels = s.weighted_labels_since_last_job
    if labels < cfg.volume_weighted_labels:
        return None
    reason = f"{labels:.0f} weighted labels since the last job (threshold {cfg.volume_weighted_labels:g})"
    return Trigger(TriggerKind.VOLUME, reason, {"weighted_labels": labels, "threshold": cfg.volume_weighted_labels})


def _acceptance_drift(s: TriggerSnapshot, cfg: TrainerSettings) -> Trigger | None:
    ref, rec = s.reference, s.recent
    if ref is None or rec is None or min(ref.judgements, rec.judgements) < cfg.drift_min_judgements:
        return None
    drop = ref.acceptance_rate - rec.acceptance_rate
    if drop <= cfg.acceptance_drop_tolerance:
        return None
    reason = (
        f"acceptance rate fell from {ref.acceptance_rate:.3f} ({ref.judgements} judgements) to "
        f"{rec.acceptance_rate:.3f} ({rec.judgements}): drop {drop:.3f} > {cfg.acceptance_drop_tolerance:g}"
    )
    figures = {
        "reference_rate": ref.acceptance_rate, "recent_rate": rec.acceptance_rate, "drop": drop,
        "reference_judgements": ref.judgements, "recent_judgements": rec.judgements,
    }  # fmt: skip
    return Trigger(TriggerKind.ACCEPTANCE_DRIFT, reason, figures)


def _ctr_drift(s: TriggerSnapshot, cfg: TrainerSettings) -> Trigger | None:
    ref, rec = s.reference, s.recent
    if ref is None or rec is None or min(ref.impressions, rec.impressions) < cfg.drift_min_impressions:
        return None
    if ref.ctr <= 0:
        return None
    relative_drop = (ref.ctr - rec.ctr) / ref.ctr
    if relative_drop <= cfg.ctr_drop_tolerance:
        return None
    reason = (
        f"CTR fell from {ref.ctr:.4f} ({ref.impressions} impressions) to {rec.ctr:.4f} ({rec.impressions}): "
        f"relative drop {relative_drop:.1%} > {cfg.ctr_drop_tolerance:.0%}"
    )
    figures = {
        "reference_ctr": ref.ctr, "recent_ctr": rec.ctr, "relative_drop": relative_drop,
        "reference_impressions": ref.impressions, "recent_impressions": rec.impressions,
    }  # fmt: skip
    return Trigger(TriggerKind.CTR_DRIFT, reason, figures)


def _embedding_drift(s: TriggerSnapshot, cfg: TrainerSettings) -> Trigger | None:
    x, y = s.reference_embeddings, s.recent_embeddings
    if x is None or y is None or min(len(x), len(y)) < cfg.mmd_min_samples:
        return None
    mmd2, p_value = mmd_test(x, y, cfg.mmd_sample_size, cfg.mmd_permutations, seed=cfg.seed)
    if p_value >= cfg.mmd_p_value:
        return None
    reason = (
        f"listing embeddings drifted: MMD² {mmd2:.4g}, permutation p-value {p_value:.4f} < {cfg.mmd_p_value:g} "
        f"({min(len(x), cfg.mmd_sample_size)} vs {min(len(y), cfg.mmd_sample_size)} listings)"
    )
    return Trigger(TriggerKind.EMBEDDING_DRIFT, reason, {"mmd2": mmd2, "p_value": p_value})


def mmd_test(
    x: np.ndarray, y: np.ndarray, sample_size: int = 500, permutations: int = 200, seed: int = 0
) -> tuple[float, float]:
    """Two-sample test of "``x`` and ``y`` come from the same distribution" by MMD².

    Each sample is subsampled (without replacement) to at most ``sample_size`` rows, so the cost
    is bounded by ``O((2·sample_size)² · (d + permutations))`` whatever the input size. The kernel
    is an RBF ``exp(-‖a-b‖² / (2σ²))`` with the median heuristic ``2σ² = median ‖a-b‖²`` over the
    pooled sample. The statistic is the unbiased MMD²; its p-value comes from ``permutations``
    random relabellings of the pooled sample: ``(1 + #{MMD²_perm ≥ MMD²}) / (1 + permutations)``.

    Parameters
    ----------
    x, y : (n, d) and (m, d) arrays, n, m ≥ 2.
    sample_size : int
        Most rows used from each sample.
    permutations : int
        Relabellings of the permutation test (the smallest p-value is ``1 / (1 + permutations)``).
    seed : int
        Seeds the subsample and the permutations: the same inputs give the same answer.

    Returns
    -------
    (mmd2, p_value) : tuple[float, float]

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> a, b = rng.normal(size=(100, 4)), rng.normal(size=(100, 4))
    >>> mmd_test(a, b, permutations=99)[1] > 0.05
    True
    >>> mmd_test(a, b + 1.0, permutations=99)[1]
    0.01
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two (n, d) arrays of the same width, got {x.shape} and {y.shape}")
    if min(len(x), len(y)) < 2 or sample_size < 2 or permutations < 1:
        raise ValueError("need at least 2 rows per sample, sample_size ≥ 2 and permutations ≥ 1")
    rng = np.random.default_rng(seed)
    x = _subsample(x, sample_size, rng)
    y = _subsample(y, sample_size, rng)
    n = len(x)
    pooled = np.concatenate([x, y])
    kernel = _rbf_kernel(pooled)
    np.fill_diagonal(kernel, 0.0)  # the unbiased statistic leaves out i == j
    labels = np.zeros((len(pooled), permutations + 1))
    labels[:n, 0] = 1.0  # column 0: the observed split, then the random relabellings
    for j in range(1, permutations + 1):
        labels[rng.permutation(len(pooled))[:n], j] = 1.0
    stats = _mmd2_unbiased(kernel, labels, n)
    observed = float(stats[0])
    p_value = float((1 + np.count_nonzero(stats[1:] >= observed)) / (1 + permutations))
    return observed, p_value


def _subsample(a: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if len(a) <= size:
        return a
    return a[np.sort(rng.choice(len(a), size=size, replace=False))]


def _rbf_kernel(pooled: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", pooled, pooled)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    off_diagonal = d2[~np.eye(len(d2), dtype=bool)]
    median = float(np.median(off_diagonal))
    if median <= 0.0:  # (nearly) all points equal: any bandwidth gives MMD² = 0
        median = 1.0
    kernel: np.ndarray = np.exp(-d2 / median)
    return kernel


def _mmd2_unbiased(kernel: np.ndarray, in_x: np.ndarray, n: int) -> np.ndarray:
    """Unbiased MMD² for each column of the 0/1 matrix ``in_x`` (1 = row belongs to the first sample)."""
    m = len(kernel) - n
    in_y = 1.0 - in_x
    k_x = kernel @ in_x
    xx = np.einsum("ij,ij->j", in_x, k_x)
    xy = np.einsum("ij,ij->j", in_y, k_x)
    yy = np.einsum("ij,ij->j", in_y, kernel @ in_y)
    result: np.ndarray = xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)
    return result
