from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.trainer import triggers
from services.trainer.triggers import (
    TriggerKind,
    TriggerSnapshot,
    WindowStats,
    cooldown_left,
    evaluate_triggers,
    mmd_test,
)
from shared.settings import TrainerSettings

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
CFG = TrainerSettings()


def snap(hours_since_job: float | None = 30.0, labels: float = 0.0, **kw: object) -> TriggerSnapshot:
    last = None if hours_since_job is None else NOW - timedelta(hours=hours_since_job)
    return TriggerSnapshot(now=NOW, last_job_at=last, weighted_labels_since_last_job=labels, **kw)  # type: ignore[arg-type]


def kinds(s: TriggerSnapshot, cfg: TrainerSettings = CFG) -> list[TriggerKind]:
    return [t.kind for t in evaluate_triggers(s, cfg)]


def test_nothing_fires_without_evidence() -> None:
    assert kinds(snap(hours_since_job=7.0, labels=10.0)) == []


def test_volume_fires_at_its_threshold_with_figures() -> None:
    assert kinds(snap(hours_since_job=7.0, labels=499.0)) == []
    (fired,) = evaluate_triggers(snap(hours_since_job=7.0, labels=500.0), CFG)
    assert fired.kind is TriggerKind.VOLUME
    assert fired.figures["weighted_labels"] == 500.0
    assert "500 weighted labels" in fired.reason


def test_schedule_needs_interval_and_some_labels() -> None:
    assert kinds(snap(hours_since_job=23.0, labels=100.0)) == []
    assert kinds(snap(hours_since_job=25.0, labels=100.0)) == [TriggerKind.SCHEDULE]
    assert kinds(snap(hours_since_job=25.0, labels=10.0)) == []  # below schedule_min_weighted_labels
    assert kinds(snap(hours_since_job=None, labels=100.0)) == [TriggerKind.SCHEDULE]  # no job yet


def test_cooldown_silences_every_rule_and_skips_the_drift_test(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> tuple[float, float]:
        raise AssertionError("MMD must not run during the cooldown")

    monkeypatch.setattr(triggers, "mmd_test", boom)
    rng = np.random.default_rng(0)
    s = snap(hours_since_job=2.0, labels=10_000.0, reference_embeddings=rng.normal(size=(100, 4)),
             recent_embeddings=rng.normal(size=(100, 4)) + 3)  # fmt: skip
    assert evaluate_triggers(s, CFG) == []
    assert cooldown_left(s, CFG) == timedelta(hours=4)
    assert cooldown_left(snap(hours_since_job=None), CFG) == timedelta(0)


def test_acceptance_drift_is_an_absolute_drop_with_minimum_judgements() -> None:
    ref = WindowStats(accepts=400, rejects=100)  # 0.80
    fired = evaluate_triggers(snap(reference=ref, recent=WindowStats(accepts=140, rejects=60)), CFG)  # 0.70
    assert [t.kind for t in fired] == [TriggerKind.ACCEPTANCE_DRIFT]
    assert fired[0].figures["drop"] == pytest.approx(0.10)
    assert kinds(snap(reference=ref, recent=WindowStats(accepts=156, rejects=44))) == []  # 0.78: within 0.05
    assert kinds(snap(reference=ref, recent=WindowStats(accepts=35, rejects=15))) == []  # 50 < 100 judgements


def test_ctr_drift_is_a_relative_drop_with_minimum_impressions() -> None:
    ref = WindowStats(impressions=10_000, clicks=200)  # 2 %
    fired = evaluate_triggers(snap(reference=ref, recent=WindowStats(impressions=5_000, clicks=75)), CFG)  # 1.5 %
    assert [t.kind for t in fired] == [TriggerKind.CTR_DRIFT]
    assert fired[0].figures["relative_drop"] == pytest.approx(0.25)
    assert kinds(snap(reference=ref, recent=WindowStats(impressions=5_000, clicks=90))) == []  # 10 % drop
    assert kinds(snap(reference=ref, recent=WindowStats(impressions=1_000, clicks=5))) == []  # too few impressions
    assert kinds(snap(reference=WindowStats(impressions=5_000), recent=WindowStats(impressions=5_000))) == []


def test_window_rates_and_validation() -> None:
    w = WindowStats(impressions=50, clicks=5, accepts=3, rejects=1)
    assert (w.ctr, w.acceptance_rate, w.judgements) == (0.1, 0.75, 4)
    assert np.isnan(WindowStats().ctr)
    with pytest.raises(ValueError):
        WindowStats(clicks=-1)


def test_mmd_identical_distributions_give_high_p_values() -> None:
    p_values = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
        mmd2, p = mmd_test(x, y, sample_size=150, permutations=99, seed=seed)
        assert abs(mmd2) < 0.02
        p_values.append(p)
    assert min(p_values) > 0.01
    assert float(np.median(p_values)) > 0.2


def test_mmd_shifted_distributions_give_the_smallest_p_value() -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(200, 16)), rng.normal(size=(200, 16)) + 0.5
    mmd2, p = mmd_test(x, y, sample_size=200, permutations=99, seed=0)
    assert mmd2 > 0.05
    assert p == pytest.approx(1 / 100)


def test_mmd_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 0.05
    assert mmd_test(x, y, 100, 50, seed=11) == mmd_test(x, y, 100, 50, seed=11)
    assert mmd_test(x, y, 100, 50, seed=11) != mmd_test(x, y, 100, 50, seed=12)  # another subsample


def test_mmd_statistic_matches_the_unbiased_formula() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(9, 3)) + 0.3
    pooled = np.concatenate([x, y])
    d2 = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / np.median(d2[~np.eye(len(d2), dtype=bool)]))
    kxx, kyy, kxy = k[:12, :12], k[12:, 12:], k[:12, 12:]
    expected = (kxx.sum() - np.trace(kxx)) / (12 * 11) + (kyy.sum() - np.trace(kyy)) / (9 * 8) - 2 * kxy.mean()
    assert mmd_test(x, y, sample_size=100, permutations=5)[0] == pytest.approx(expected)


def test_mmd_cost_is_bounded_by_the_sample_size(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes: list[tuple[int, ...]] = []
    real = triggers._rbf_kernel

    def spy(pooled: np.ndarray) -> np.ndarray:
        shapes.append(pooled.shape)
        return real(pooled)

    monkeypatch.setattr(triggers, "_rbf_kernel", spy)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20_000, 32)), rng.normal(size=(15_000, 32))
    start = time.perf_counter()
    mmd_test(x, y, sample_size=200, permutations=100)
    assert shapes == [(400, 32)]
    assert time.perf_counter() - start < 2.0


def test_mmd_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        mmd_test(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        mmd_test(np.zeros((1, 3)), np.zeros((10, 3)))


def test_embedding_drift_fires_only_with_enough_samples() -> None:
    rng = np.random.default_rng(1)
    cfg = TrainerSettings(mmd_sample_size=100, mmd_permutations=150)
    ref, shifted = rng.normal(size=(120, 8)), rng.normal(size=(120, 8)) + 1.0
    fired = evaluate_triggers(snap(reference_embeddings=ref, recent_embeddings=shifted), cfg)
    assert [t.kind for t in fired] == [TriggerKind.EMBEDDING_DRIFT]
    assert fired[0].figures["p_value"] < cfg.mmd_p_value
    same = rng.normal(size=(120, 8))
    assert kinds(snap(reference_embeddings=ref, recent_embeddings=same), cfg) == []
    assert kinds(snap(reference_embeddings=ref[:20], recent_embeddings=shifted[:20]), cfg) == []  # < min samples


def test_several_rules_fire_together() -> None:
    s = snap(hours_since_job=30.0, labels=900.0, reference=WindowStats(accepts=400, rejects=100),
             recent=WindowStats(accepts=100, rejects=100))  # fmt: skip
    assert kinds(s) == [TriggerKind.SCHEDULE, TriggerKind.VOLUME, TriggerKind.ACCEPTANCE_DRIFT]


def test_settings_refuse_an_unreachable_mmd_threshold() -> None:
    with pytest.raises(ValueError, match="never reach"):
        TrainerSettings(mmd_permutations=50, mmd_p_value=0.01)
