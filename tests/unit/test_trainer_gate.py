from __future__ import annotations

import json
import math

from services.trainer.gate import GoldenMetrics, ModelScores, SliceMetric, decide
from shared.settings import TrainerSettings

CFG = TrainerSettings()
TAGS = {f"tag{i}": SliceMetric(f1=0.80, support=50) for i in range(10)}


def scores(
    micro: float = 0.70,
    coverage: float = 0.95,
    per_tag: dict[str, SliceMetric] | None = None,
    recent: float | None = 0.60,
    recent_examples: int = 200,
) -> ModelScores:
    golden = GoldenMetrics(micro_f1=micro, macro_f1=micro - 0.1, coverage=coverage, per_tag=per_tag or dict(TAGS))
    return ModelScores(golden=golden, recent=recent, recent_examples=recent_examples)


def outcomes(candidate: ModelScores, champion: ModelScores | None) -> dict[str, str]:
    return {c.name: c.outcome for c in decide(candidate, champion, CFG).checks}


def test_better_candidate_is_blessed_with_every_check_reported() -> None:
    d = decide(scores(micro=0.72, recent=0.65), scores(), CFG)
    assert d.blessed
    assert [c.name for c in d.checks] == ["floor_micro_f1", "floor_coverage", "golden_micro_f1", "slices", "recent"]
    assert all(r.startswith("PASS ") for r in d.reasons)
    assert "0.7200 vs champion 0.7000" in d.reasons[2]


def test_no_champion_only_floors_apply() -> None:
    d = decide(scores(micro=0.40, recent=None), None, CFG)
    assert d.blessed
    assert outcomes(scores(micro=0.40, recent=None), None) == {
        "floor_micro_f1": "pass", "floor_coverage": "pass", "golden_micro_f1": "skip", "slices": "skip",
        "recent": "skip",
    }  # fmt: skip
    assert "no champion yet" in d.reasons[-1]
    assert not decide(scores(micro=0.20), None, CFG).blessed  # below the micro-F1 floor
    low_cov = decide(scores(coverage=0.30), None, CFG)
    assert not low_cov.blessed and low_cov.reasons[1].startswith("FAIL floor_coverage: golden coverage 0.3000 <")


def test_golden_micro_f1_tolerance() -> None:
    assert outcomes(scores(micro=0.696, recent=0.7), scores())["golden_micro_f1"] == "pass"  # -0.004
    slightly_worse = decide(scores(micro=0.69, recent=0.7), scores(), CFG)  # -0.01
    assert not slightly_worse.blessed
    assert slightly_worse.checks[2].outcome == "fail"
    assert math.isclose(float(slightly_worse.checks[2].figures["delta"]), -0.01)


def test_one_collapsed_slice_rejects_and_is_named() -> None:
    per_tag = dict(TAGS) | {"tag3": SliceMetric(f1=0.10, support=50)}
    d = decide(scores(micro=0.75, per_tag=per_tag, recent=0.9), scores(), CFG)
    assert not d.blessed
    (slices,) = [c for c in d.checks if c.name == "slices"]
    assert slices.outcome == "fail"
    assert "1 of 10 tags" in slices.detail and "tag3 0.800→0.100 (n=50)" in slices.detail
    assert slices.figures["offenders"] == [
        {"tag": "tag3", "champion_f1": 0.80, "candidate_f1": 0.10, "drop": 0.80 - 0.10, "support": 50}
    ]
    # every other check still reported, and passed
    assert [c.outcome for c in d.checks if c.name != "slices"] == ["pass"] * 4


def test_small_slices_are_ignored_and_wobbles_tolerated() -> None:
    champion = scores(per_tag=dict(TAGS) | {"rare": SliceMetric(f1=0.9, support=19)})
    per_tag = {t: SliceMetric(f1=0.76, support=50) for t in TAGS} | {"rare": SliceMetric(f1=0.0, support=19)}
    assert outcomes(scores(per_tag=per_tag, recent=0.7), champion)["slices"] == "pass"


def test_a_drop_within_sampling_noise_is_not_a_collapse() -> None:
    # F1 0.24 -> 0.16 on 22 examples is one listing; the same drop on 900 is not noise.
    for support, outcome in ((22, "pass"), (900, "fail")):
        champion = scores(per_tag=dict(TAGS) | {"t": SliceMetric(f1=0.24, support=support)})
        candidate = scores(per_tag=dict(TAGS) | {"t": SliceMetric(f1=0.16, support=support)}, recent=0.7)
        assert outcomes(candidate, champion)["slices"] == outcome, support


def test_tag_missing_from_candidate_counts_as_collapsed() -> None:
    per_tag = {t: m for t, m in TAGS.items() if t != "tag7"}
    d = decide(scores(per_tag=per_tag, recent=0.7), scores(), CFG)
    assert not d.blessed and "tag7 0.800→0.000" in d.reasons[3]


def test_offenders_are_listed_worst_first_and_capped() -> None:
    per_tag = {f"tag{i}": SliceMetric(f1=0.7 - 0.05 * i, support=500) for i in range(10)}
    champion = scores(per_tag={t: SliceMetric(f1=m.f1, support=500) for t, m in TAGS.items()})
    d = decide(scores(per_tag=per_tag, recent=0.7), champion, CFG)
    slices = d.checks[3]
    names = [o["tag"] for o in slices.figures["offenders"]]
    assert names == [f"tag{i}" for i in range(9, -1, -1)]  # drops 0.55 ... 0.10, all over 0.05
    assert "10 of 10 tags" in slices.detail
    assert "worst: tag9 0.800→0.250" in slices.detail and "tag5" in slices.detail and "tag4" not in slices.detail
    assert slices.detail.endswith("and 5 more")


def test_candidate_must_be_better_on_recent_feedback() -> None:
    assert outcomes(scores(recent=0.60), scores(recent=0.60))["recent"] == "fail"  # equal is not better
    assert outcomes(scores(recent=0.61), scores(recent=0.60))["recent"] == "pass"
    assert outcomes(scores(recent=None), scores())["recent"] == "fail"
    few = decide(scores(recent=0.9, recent_examples=10), scores(), CFG)
    assert not few.blessed and "10 examples < 30" in few.reasons[-1]


def test_nan_metrics_fail() -> None:
    d = decide(scores(micro=math.nan), None, CFG)
    assert not d.blessed and d.checks[0].outcome == "fail"


def test_decision_is_json_ready() -> None:
    d = decide(scores(micro=0.75, recent=0.9), scores(), CFG)
    row = json.loads(json.dumps(d.to_dict()))
    assert row["blessed"] is True and len(row["checks"]) == 5
    assert row["checks"][4]["figures"]["examples"] == 200
