from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from services.trainer.feedback_labels import (
    FeedbackRow,
    Label,
    LabelKind,
    build_labels,
    click_weight,
    composition,
    examination_propensity,
    examined_impression_mass,
    fingerprint,
    label_row,
    merchant_verdict,
    mix_replay,
    replay_count,
    weighted_click_mass,
)
from shared.settings import TrainerSettings

CFG = TrainerSettings(strong_label_weight=5.0, weak_label_max_weight=2.0)  # room to see weights scale
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def one(row: FeedbackRow, cfg: TrainerSettings = CFG) -> Label | None:
    return label_row(row, cfg)


# --- position propensity -----------------------------------------------------------------------


def test_examination_propensity_follows_the_power_law() -> None:
    assert examination_propensity(1) == 1.0
    assert examination_propensity(4, eta=1.0) == 0.25
    assert examination_propensity(4, eta=2.0) == 1 / 16
    assert examination_propensity(7, eta=0.0) == 1.0  # eta 0: no position bias
    assert examination_propensity(None, eta=2.0) == 1.0
    with pytest.raises(ValueError):
        examination_propensity(0)


def test_click_weights_are_inverse_propensity_clipped() -> None:
    assert click_weight(1) == 1.0
    assert click_weight(5, eta=1.0, max_weight=10.0) == 5.0
    assert click_weight(4, eta=2.0, max_weight=10.0) == 10.0  # 16 clipped
    assert click_weight(None) == 1.0
    cfg = TrainerSettings(propensity_eta=1.0, propensity_max_weight=10.0)
    assert weighted_click_mass([1, 2, 20, None], cfg) == 1 + 2 + 10 + 1
    assert examined_impression_mass([1, 2, 4, None], cfg) == pytest.approx(1 + 0.5 + 0.25 + 1)


# --- strong labels -------------------------------------------------------------------------------


def test_merchant_judgements_are_strong_labels() -> None:
    accepted = one(FeedbackRow("l1", "t", accepts=1))
    rejected = one(FeedbackRow("l1", "t", rejects=2))
    assert accepted == Label("l1", "t", 1, CFG.strong_label_weight, LabelKind.STRONG)
    assert rejected == Label("l1", "t", 0, CFG.strong_label_weight, LabelKind.STRONG)


def test_conflicting_judgements_latest_then_majority_then_no_label() -> None:
    assert merchant_verdict(FeedbackRow("l", "t", accepts=1, rejects=3, last_accept_at=T1, last_reject_at=T0)) == 1
    assert merchant_verdict(FeedbackRow("l", "t", accepts=3, rejects=1, last_accept_at=T0, last_reject_at=T1)) == 0
    assert merchant_verdict(FeedbackRow("l", "t", accepts=1, rejects=3)) == 0  # no timestamps: majority
    assert merchant_verdict(FeedbackRow("l", "t", accepts=3, rejects=1, last_accept_at=T0)) == 1  # one missing
    assert merchant_verdict(FeedbackRow("l", "t", accepts=2, rejects=2, last_accept_at=T0, last_reject_at=T0)) is None
    tie = FeedbackRow("l", "t", impressions=500, purchases=5, accepts=1, rejects=1)
    assert one(tie) is None  # a merchant tie is not settled by shoppers


def test_a_strong_label_hides_weak_evidence() -> None:
    label = one(FeedbackRow("l", "t", impressions=100, clicks=10, purchases=3, rejects=1))
    assert label is not None and (label.label, label.kind) == (0, LabelKind.STRONG)


# --- weak labels ---------------------------------------------------------------------------------


def test_weak_positive_needs_enough_engagement_and_scales_its_weight() -> None:
    assert one(FeedbackRow("l", "t", impressions=10, clicks=1)) is None  # 1 < 2, and engaged: no negative
    cart = one(FeedbackRow("l", "t", impressions=10, carts=2))
    assert cart == Label("l", "t", 1, 2.0, LabelKind.WEAK)  # 6 / 2 capped
    assert one(FeedbackRow("l", "t", impressions=10, clicks=2)) == Label("l", "t", 1, 1.0, LabelKind.WEAK)
    buyer = one(FeedbackRow("l", "t", impressions=10, clicks=2, purchases=1))
    assert buyer is not None and buyer.weight == CFG.weak_label_max_weight  # 7 / 2 capped
    assert buyer.weight < CFG.strong_label_weight


def test_position_weighted_clicks_count_deep_clicks_more() -> None:
    deep_clicks = weighted_click_mass([3, 4], CFG)  # clicks at positions 3 and 4 weigh 3 + 4
    top_clicks = weighted_click_mass([1, 1], CFG)
    deep = one(FeedbackRow("l", "t", impressions=3, clicks=2, weighted_clicks=deep_clicks))
    top = one(FeedbackRow("l", "t", impressions=3, clicks=2, weighted_clicks=top_clicks))
    assert top == Label("l", "t", 1, 1.0, LabelKind.WEAK)  # 2 / 2
    assert deep == Label("l", "t", 1, 2.0, LabelKind.WEAK)  # min(7 / 2, 2)


def test_one_shopper_is_never_a_weak_positive() -> None:
    """One click deep down the page weighs 1/propensity alone; on a wrong tag such stray clicks made
    17 % of a demo run's weak positives wrong. It takes two engaged shoppers, however deep the click."""
    deep_click = weighted_click_mass([5], CFG)  # a click at position 5 weighs 5, over the threshold alone
    assert one(FeedbackRow("l", "t", impressions=3, clicks=1, weighted_clicks=deep_click)) is None
    buyer = FeedbackRow("l", "t", impressions=3, clicks=1, carts=1, purchases=1)  # one shopper, all the way
    assert one(buyer) is None
    assert one(FeedbackRow("l", "t", impressions=3, clicks=1, weighted_clicks=deep_click),
               TrainerSettings(min_engaged_shoppers_weak_positive=1)) is not None


def test_weak_negative_needs_examined_impressions_without_engagement() -> None:
    assert one(FeedbackRow("l", "t", impressions=19)) is None
    assert one(FeedbackRow("l", "t", impressions=20)) == Label("l", "t", 0, 1.0, LabelKind.WEAK)
    assert one(FeedbackRow("l", "t", impressions=100)) == Label("l", "t", 0, 2.0, LabelKind.WEAK)
    examined = examined_impression_mass([10] * 40, CFG)  # 40 impressions at position 10: 4 examinations
    assert one(FeedbackRow("l", "t", impressions=40, examined_impressions=examined)) is None
    assert one(FeedbackRow("l", "t", impressions=400, clicks=1)) is None  # some engagement: not a negative


def test_exploratory_tags_are_labelled_like_any_other() -> None:
    shown = one(FeedbackRow("l", "t", impressions=10, carts=2))
    explored = one(FeedbackRow("l", "t", impressions=10, carts=2, exploratory=True))
    assert shown is not None and explored is not None
    assert (explored.label, explored.weight, explored.kind) == (shown.label, shown.weight, shown.kind)
    assert explored.exploratory and not shown.exploratory


def test_build_labels_keeps_input_order_and_drops_thin_rows() -> None:
    rows = [FeedbackRow("l2", "a", accepts=1), FeedbackRow("l1", "b", impressions=1), FeedbackRow("l1", "a", rejects=1)]
    assert [(x.listing_id, x.tag_id) for x in build_labels(rows, CFG)] == [("l2", "a"), ("l1", "a")]


def test_rows_refuse_negative_counts() -> None:
    with pytest.raises(ValueError):
        FeedbackRow("l", "t", clicks=-1)
    with pytest.raises(ValueError):
        FeedbackRow("l", "t", weighted_clicks=-0.5)


# --- replay mix ----------------------------------------------------------------------------------


def originals() -> list[Label]:
    shares = {"a": 5000, "b": 3000, "c": 1500, "d": 500}
    return [Label(f"o{t}{i}", t, i % 2, 1.0, LabelKind.STRONG) for t, n in shares.items() for i in range(n)]


def feedback(n: int = 800) -> list[Label]:
    return [Label(f"f{i}", "abcd"[i % 4], 1, 1.0, LabelKind.WEAK) for i in range(n)]


def test_replay_count_is_the_share_of_the_final_set() -> None:
    assert replay_count(800, 10_000, 0.2) == 200
    assert replay_count(800, 100, 0.2) == 100  # capped by what exists
    assert replay_count(800, 10_000, 0.0) == 0
    with pytest.raises(ValueError):
        replay_count(10, 10, 1.0)


def test_mix_replay_is_stratified_by_tag() -> None:
    mixed = mix_replay(feedback(), originals(), share=0.2, seed=1)
    replayed = [x for x in mixed if x.kind is LabelKind.REPLAY]
    assert len(mixed) == 1000 and len(replayed) == 200
    assert Counter(x.tag_id for x in replayed) == {"a": 100, "b": 60, "c": 30, "d": 10}  # 50/30/15/5 %
    assert {x.listing_id for x in replayed} <= {x.listing_id for x in originals()}


def test_mix_replay_rounds_small_strata_by_largest_remainder() -> None:
    orig = [Label(f"o{t}{i}", t, 1, 1.0, LabelKind.STRONG) for t, n in (("x", 7), ("y", 2), ("z", 1)) for i in range(n)]
    replayed = [x for x in mix_replay(feedback(12), orig, share=0.25, seed=0) if x.kind is LabelKind.REPLAY]
    assert Counter(x.tag_id for x in replayed) == {"x": 3, "y": 1}  # 4 × (0.7, 0.2, 0.1) = 2.8, 0.8, 0.4


def test_mix_replay_is_deterministic_and_order_independent() -> None:
    orig, fb = originals(), feedback()
    first = mix_replay(fb, orig, 0.2, seed=3)
    assert first == mix_replay(list(reversed(fb)), list(reversed(orig)), 0.2, seed=3)
    assert fingerprint(first) != fingerprint(mix_replay(fb, orig, 0.2, seed=4))


def test_mix_replay_skips_pairs_that_feedback_relabelled() -> None:
    orig = [Label("l1", "a", 1, 1.0, LabelKind.STRONG), Label("l2", "a", 1, 1.0, LabelKind.STRONG)]
    fb = [Label("l1", "a", 0, 5.0, LabelKind.STRONG)] * 4
    mixed = mix_replay(fb, orig, share=0.5, seed=0)
    assert [x for x in mixed if x.kind is LabelKind.REPLAY] == [Label("l2", "a", 1, 1.0, LabelKind.REPLAY)]


def test_no_feedback_means_no_replay() -> None:
    assert mix_replay([], originals(), 0.2) == []


# --- composition and fingerprint -----------------------------------------------------------------


def test_composition_counts_kinds_overall_and_per_tag() -> None:
    labels = [
        Label("l1", "a", 1, 5.0, LabelKind.STRONG),
        Label("l2", "a", 0, 1.0, LabelKind.WEAK, exploratory=True),
        Label("l3", "b", 1, 1.0, LabelKind.REPLAY),
        Label("l4", "b", 1, 2.0, LabelKind.WEAK),
    ]
    c = composition(labels)
    assert (c.total, c.strong, c.weak, c.replayed, c.exploratory) == (4, 1, 2, 1, 1)
    assert (c.positives, c.negatives, c.weight) == (3, 1, 9.0)
    assert (c.per_tag["a"].strong, c.per_tag["a"].weak, c.per_tag["a"].negatives) == (1, 1, 1)
    assert (c.per_tag["b"].replayed, c.per_tag["b"].weak, c.per_tag["b"].positives) == (1, 1, 2)
    stored = json.loads(json.dumps(c.to_dict()))
    assert stored["per_tag"]["b"] == {"strong": 0, "weak": 1, "replayed": 1, "positives": 2, "negatives": 0}


def test_fingerprint_is_stable_canonical_and_sensitive() -> None:
    labels = [Label("l1", "a", 1, 1.0, LabelKind.WEAK), Label("l2", "b", 0, 5.0, LabelKind.STRONG)]
    fp = fingerprint(labels)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == fingerprint(list(reversed(labels)))
    assert fp != fingerprint([labels[0], Label("l2", "b", 0, 5.000001, LabelKind.STRONG)])
    assert fp != fingerprint([labels[0], Label("l2", "b", 1, 5.0, LabelKind.STRONG)])
    assert fp != fingerprint([labels[0], Label("l2", "b", 0, 5.0, LabelKind.REPLAY)])
    # ids holding separators cannot collide
    assert fingerprint([Label("a\tb", "c", 1, 1.0, LabelKind.WEAK)]) != fingerprint(
        [Label("a", "b\tc", 1, 1.0, LabelKind.WEAK)]
    )
    assert fingerprint([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
