from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from shared.canary import (
    ArmStats,
    ListingSums,
    canary_verdict,
    exploration_propensity,
    exploratory_pick,
    one_sided_p_worse,
    routes_to_candidate,
    unit_hash,
)
from shared.settings import TrainerSettings

IDS = [f"listing-{i}" for i in range(100_000)]
CFG = TrainerSettings(canary_min_impressions=1000, canary_min_judgements=30, canary_min_requests=200)


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_routing_share_is_within_one_percent_over_100k_ids(share: float) -> None:
    routed = sum(routes_to_candidate(i, share, salt="v7") for i in IDS)
    assert abs(routed / len(IDS) - share) < 0.01


def test_routing_is_stable_across_calls_and_depends_on_the_salt() -> None:
    first = {i for i in IDS[:20_000] if routes_to_candidate(i, 0.1, salt="v7")}
    assert first == {i for i in IDS[:20_000] if routes_to_candidate(i, 0.1, salt="v7")}
    other = {i for i in IDS[:20_000] if routes_to_candidate(i, 0.1, salt="v8")}
    assert 0.05 < len(first & other) / len(first) < 0.15  # an independent slice: overlap ≈ share
    # a larger share only adds listings: raising the canary never moves a listing back
    assert first <= {i for i in IDS[:20_000] if routes_to_candidate(i, 0.2, salt="v7")}


def test_routing_is_the_same_in_another_process() -> None:
    code = "from shared.canary import unit_hash; print(repr(unit_hash('v7', 'listing-42')))"
    env = os.environ | {"PYTHONHASHSEED": "123"}  # str hashes differ from this process: routing must not use them
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert float(out.stdout) == unit_hash("v7", "listing-42")


def test_unit_hash_separates_its_parts() -> None:
    assert unit_hash("s", "ab", "c") != unit_hash("s", "a", "bc")
    assert 0.0 <= unit_hash("s", "") < 1.0


# --- exploration ---------------------------------------------------------------------------------


def test_exploration_picks_about_its_share_of_candidate_tags() -> None:
    picked = sum(len(exploratory_pick(i, ["t1"], share=0.02, max_n=1, salt="x")) for i in IDS)
    assert abs(picked / len(IDS) - 0.02) < 0.002


@pytest.mark.parametrize(("k", "max_n"), [(1, 1), (4, 1), (12, 1), (12, 3)])
def test_exploration_propensity_is_how_often_a_candidate_is_picked(k: int, max_n: int) -> None:
    tags = [f"t{i}" for i in range(k)]
    n = 20_000
    picked = sum("t0" in exploratory_pick(f"l{i}", tags, 0.3, max_n, "salt") for i in range(n))
    expected = exploration_propensity(k, 0.3, max_n)
    assert abs(picked / n - expected) < 4 * (expected * (1 - expected) / n) ** 0.5 + 1e-9


def test_exploration_is_deterministic_capped_and_order_independent() -> None:
    tags = [f"t{k}" for k in range(30)]
    counts = Counter(len(exploratory_pick(i, tags, share=0.2, max_n=2, salt="x")) for i in IDS[:5_000])
    assert max(counts) == 2 and counts[0] > 0
    for i in IDS[:500]:
        picks = exploratory_pick(i, tags, share=0.2, max_n=2, salt="x")
        assert picks == exploratory_pick(i, list(reversed(tags)) + tags[:3], share=0.2, max_n=2, salt="x")
        assert set(picks) <= set(tags)
    assert exploratory_pick("l", tags, share=0.5, max_n=0, salt="x") == []
    assert exploratory_pick("l", [], share=0.5, max_n=1, salt="x") == []


# --- verdict -------------------------------------------------------------------------------------


def arm(
    impressions: int = 5_000,
    clicks: int = 100,
    accepts: int = 80,
    rejects: int = 20,
    requests: int = 1_000,
    errors: int = 0,
    p99: float | None = 40.0,
    listings: int = 1_000,
) -> ArmStats:
    return ArmStats(impressions, clicks, accepts, rejects, requests, errors, p99, listings)


def test_equal_arms_over_the_minimum_sample_promote() -> None:
    v = canary_verdict(arm(), arm(clicks=95, accepts=78, rejects=22), CFG)
    assert v.action == "promote"
    assert any(r.startswith("PASS CTR") for r in v.reasons) and any(r.startswith("PASS acceptance") for r in v.reasons)


def test_below_the_minimum_sample_wait() -> None:
    v = canary_verdict(arm(), arm(impressions=400, clicks=1, listings=80), CFG)
    assert v.action == "wait"
    assert "candidate has 400 impressions < 1000" in v.reasons[-1]
    assert canary_verdict(arm(), arm(accepts=10, rejects=5), CFG).action == "wait"  # 15 judgements < 30


def test_worse_ctr_or_acceptance_roll_back() -> None:
    ctr = canary_verdict(arm(), arm(clicks=50), CFG)  # 1 % vs 2 %
    assert ctr.action == "rollback"
    assert any(r.startswith("FAIL CTR") for r in ctr.reasons)
    acc = canary_verdict(arm(), arm(accepts=55, rejects=45), CFG)  # 55 % vs 80 %
    assert acc.action == "rollback"
    assert any(r.startswith("FAIL acceptance") for r in acc.reasons)


def test_a_clearly_worse_ctr_rolls_back_before_judgements_arrive() -> None:
    few_judgements = {"accepts": 8, "rejects": 3}  # 11 < 30
    bad = canary_verdict(arm(), arm(clicks=40, **few_judgements), CFG)  # 0.8 % vs 2 % CTR
    assert bad.action == "rollback" and any(r.startswith("FAIL CTR") for r in bad.reasons)
    fine = canary_verdict(arm(), arm(clicks=100, **few_judgements), CFG)
    assert fine.action == "wait" and any(r.startswith("PASS CTR") for r in fine.reasons)
    assert "candidate has 11 judgements < 30" in fine.reasons[-1]


def test_errors_roll_back_even_before_the_minimum_sample() -> None:
    early = canary_verdict(arm(), arm(impressions=10, requests=20, errors=1, listings=5), CFG)
    assert early.action == "wait"  # 1 error may be bad luck: 1 ≤ 1 % of 200
    many = canary_verdict(arm(), arm(impressions=10, requests=20, errors=3, listings=5), CFG)
    assert many.action == "rollback" and many.reasons[0].startswith("FAIL errors")
    assert canary_verdict(arm(), arm(requests=1_000, errors=11), CFG).action == "rollback"  # 1.1 % > 1 %


def test_slow_candidate_rolls_back() -> None:
    slow = canary_verdict(arm(p99=40.0), arm(p99=70.0), CFG)
    assert slow.action == "rollback" and any("FAIL latency" in r for r in slow.reasons)
    assert canary_verdict(arm(p99=40.0), arm(p99=55.0), CFG).action == "promote"
    too_few = canary_verdict(arm(p99=40.0), arm(p99=400.0, requests=50), CFG)
    assert too_few.action == "promote" and any(r.startswith("SKIP latency") for r in too_few.reasons)


def test_a_p99_of_a_few_requests_decides_nothing() -> None:
    """Defect: with canary_min_requests 10 (the demo's) a canary was rolled back on p99 802 vs 520 ms
    over its first ~10 requests per arm: the p99 of fewer than 100 requests is their maximum."""
    cfg = TrainerSettings(canary_min_requests=10)
    early = canary_verdict(arm(p99=520.0, requests=60), arm(p99=802.0, requests=12), cfg)
    assert early.action == "promote" and any(r.startswith("SKIP latency") for r in early.reasons)
    later = canary_verdict(arm(p99=520.0, requests=600), arm(p99=802.0, requests=150), cfg)
    assert later.action == "rollback" and any(r.startswith("FAIL latency") for r in later.reasons)


def test_a_candidate_showing_far_fewer_tags_rolls_back() -> None:
    # Shoppers see both arms' listings alike: 1.2 vs 5 impressions per listing is tags not shown,
    # whatever the CTR of the few it still shows (here better than the champion's).
    few = canary_verdict(arm(), arm(impressions=1_200, clicks=60, listings=1_000), CFG)
    assert few.action == "rollback" and any(r.startswith("FAIL exposure") for r in few.reasons)
    # the canary's share of listings (and of Triton requests) is smaller: per listing, it is alike
    share = canary_verdict(arm(listings=900, requests=90), arm(impressions=500, clicks=10, listings=100, requests=30),
                           TrainerSettings(canary_min_impressions=100, canary_min_requests=20))
    assert any(r.startswith("PASS exposure") for r in share.reasons) and share.action == "promote"
    early = canary_verdict(arm(), arm(impressions=100, clicks=12, listings=120), CFG)
    assert any(r.startswith("SKIP exposure") for r in early.reasons)  # 120 listings < 200


def test_without_judgement_minimum_ctr_alone_decides() -> None:
    cfg = TrainerSettings(canary_min_judgements=0)
    v = canary_verdict(arm(accepts=0, rejects=0), arm(accepts=0, rejects=0), cfg)
    assert v.action == "promote" and any(r.startswith("SKIP acceptance") for r in v.reasons)


def test_one_sided_z_test() -> None:
    assert one_sided_p_worse(100, 1000, 100, 1000) == pytest.approx(0.5)
    assert one_sided_p_worse(100, 1000, 60, 1000) < 0.001  # candidate clearly worse
    assert one_sided_p_worse(60, 1000, 100, 1000) > 0.999  # candidate clearly better
    assert one_sided_p_worse(0, 100, 0, 100) == 0.5
    with pytest.raises(ValueError):
        one_sided_p_worse(1, 0, 1, 10)


# --- equal candidates are rarely rolled back -------------------------------------------------------


def simulated_arm(rng: random.Random, listings: int, impressions_per_tag: int, judged: float) -> ArmStats:
    """An arm whose listings show 1-4 tags, 70 % of them right; every impression of a right tag is
    clicked with p 0.3, of a wrong one 0.02 (so clicks come in clumps per tag); a merchant judges
    one tag of ``judged`` of the listings and accepts it with p 0.7."""
    imps = clicks = accepts = judgements = 0
    ctr, acc = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    for _ in range(listings):
        i = c = a = j = 0
        for _tag in range(rng.randint(1, 4)):
            p = 0.3 if rng.random() < 0.7 else 0.02
            i += impressions_per_tag
            c += sum(rng.random() < p for _ in range(impressions_per_tag))
        if rng.random() < judged:
            j, a = 1, int(rng.random() < 0.7)
        imps, clicks, accepts, judgements = imps + i, clicks + c, accepts + a, judgements + j
        for sums, x, n in ((ctr, c, i), (acc, a, j)):
            sums[0], sums[1], sums[2] = sums[0] + x * x, sums[1] + n * n, sums[2] + x * n
    return ArmStats(imps, clicks, accepts, judgements - accepts, listings, 0, None, listings,
                    ListingSums(*ctr), ListingSums(*acc))  # fmt: skip


def false_rollbacks(cfg: TrainerSettings, impressions_per_tag: int, judged: float, clustered: bool) -> float:
    """Share of 400 canaries between two arms of the same model that end in a rollback."""
    rng = random.Random(7)
    rollbacks = 0
    for _ in range(400):
        champion, candidate = (simulated_arm(rng, n, impressions_per_tag, judged) for n in (200, 60))
        if not clustered:
            champion, candidate = (replace(x, ctr_sums=None, acceptance_sums=None) for x in (champion, candidate))
        rollbacks += canary_verdict(champion, candidate, cfg).action == "rollback"
    return rollbacks / 400


def test_clumped_clicks_do_not_roll_back_an_equal_candidate_more_often_than_alpha() -> None:
    # 20 impressions of each shown tag: tested as independent trials the CTR test rolled back an
    # equal candidate in ~15 % of canaries at α 0.05; clustered by listing, about α.
    cfg = TrainerSettings(canary_min_impressions=300, canary_min_judgements=0, canary_min_requests=10)
    assert false_rollbacks(cfg, 20, judged=0.0, clustered=True) <= 0.08
    assert false_rollbacks(cfg, 20, judged=0.0, clustered=False) > 0.12  # what the old test did


def test_two_rates_share_alpha() -> None:
    # CTR and acceptance each tested at α rolled back ~10 % of equal candidates; at α/2 each, ≤ α.
    cfg = TrainerSettings(canary_min_impressions=300, canary_min_judgements=20, canary_min_requests=10)
    assert false_rollbacks(cfg, 6, judged=0.5, clustered=True) <= 0.07
    each_at_alpha = cfg.model_copy(update={"canary_alpha": 2 * cfg.canary_alpha})  # the old rule, still clustered
    assert false_rollbacks(each_at_alpha, 6, judged=0.5, clustered=True) > 0.08


def test_rate_variance_is_clustered_by_listing() -> None:
    even = ListingSums(x_sq=50 * 1**2, n_sq=50 * 2**2, x_n=50 * 1 * 2)  # 50 listings: 1 click of 2 each
    clumped = ListingSums(x_sq=25 * 2**2, n_sq=50 * 2**2, x_n=25 * 2 * 2)  # 25 listings clicked twice, 25 never
    from shared.canary import rate_variance

    assert rate_variance(50, 100, 50, even) == pytest.approx(0.25 / 100)  # never below binomial
    assert rate_variance(50, 100, 50, clumped) == pytest.approx(2 * 0.25 / 100 * 50 / 49)


def test_an_equal_candidate_is_not_judged_on_a_handful_of_listings() -> None:
    """Defect: a demo canary was rolled back 4 s in, on 180 impressions of 5 listings (CTR 0.011 vs
    0.054): the impression minimum was met by a few listings, each one draw of right or wrong tags."""
    cfg = TrainerSettings(canary_min_impressions=150, canary_min_judgements=0, canary_min_requests=10)
    rng = random.Random(11)
    verdicts = Counter(
        canary_verdict(simulated_arm(rng, 200, 25, 0.0), simulated_arm(rng, 4, 25, 0.0), cfg).action
        for _ in range(400)
    )
    assert verdicts == {"wait": 400}
    waiting = canary_verdict(simulated_arm(rng, 200, 25, 0.0), simulated_arm(rng, 4, 25, 0.0), cfg)
    assert "candidate has feedback on 4 listings < 30" in waiting.reasons[-1]
    # with the listings in, an equal candidate is rolled back about as often as α says
    enough = sum(canary_verdict(simulated_arm(rng, 200, 25, 0.0), simulated_arm(rng, 40, 25, 0.0), cfg).action
                 == "rollback" for _ in range(400)) / 400  # fmt: skip
    assert enough <= 0.08


def test_neither_rate_is_tested_on_a_handful_of_listings() -> None:
    # both rates wait for the listings, not only the first one tested
    few = canary_verdict(arm(), arm(accepts=10, rejects=90, listings=10), CFG)
    assert few.action == "wait" and not any(r.startswith("FAIL") for r in few.reasons)
    assert canary_verdict(arm(), arm(accepts=10, rejects=90, listings=40), CFG).action == "rollback"
