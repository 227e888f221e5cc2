"""Canary routing, exploratory tag picks and the canary verdict (pure; no I/O).

Routing must give the same answer for a listing in every tagger process, after every restart
and on every machine, so it is a keyed hash, never Python's randomised ``hash()`` or a random
draw: :func:`unit_hash` maps ``(salt, key)`` through BLAKE2b to a uniform number in [0, 1).
Use the candidate's version as (part of) the salt, so each canary tags a different slice of
listings and no listing is always the guinea pig.

Examples
--------
>>> routes_to_candidate("listing-42", 0.1, salt="v7") == routes_to_candidate("listing-42", 0.1, salt="v7")
True
>>> routes_to_candidate("listing-42", 0.0, salt="v7"), routes_to_candidate("listing-42", 1.0, salt="v7")
(False, True)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from shared.settings import TrainerSettings

_SEP = b"\x1f"  # unit separator: ("a", "bc") and ("ab", "c") hash differently


def unit_hash(salt: str, *parts: str) -> float:
    """A uniform number in [0, 1) from BLAKE2b of ``salt`` and ``parts``; stable everywhere.

    >>> unit_hash("s", "a")
    0.688830000530899
    """
    data = _SEP.join(p.encode("utf-8") for p in (salt, *parts))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2.0**64


def routes_to_candidate(listing_id: str, share: float, salt: str) -> bool:
    """Whether the canary (candidate) version tags ``listing_id``: true for ``share`` of listings."""
    return unit_hash(salt, listing_id) < share


def exploratory_pick(listing_id: str, candidates: Iterable[str], share: float, max_n: int, salt: str) -> list[str]:
    """Below-threshold candidate tags of a listing to publish as exploratory.

    Each (listing, tag) pair is picked with probability ``share`` by its own hash, so about
    ``share`` of all candidate tags are explored, independently of the order the candidates
    come in; at most ``max_n`` are kept per listing (those with the smallest hashes: still a
    uniform choice). The result is sorted by that hash.

    >>> exploratory_pick("l1", ["t1", "t2", "t3"], share=1.0, max_n=1, salt="x")
    ['t3']
    >>> exploratory_pick("l1", ["t1", "t2", "t3"], share=0.0, max_n=1, salt="x")
    []
    """
    if max_n <= 0 or share <= 0.0:
        return []
    scored = sorted((h, tag) for tag in set(candidates) if (h := unit_hash(salt, listing_id, tag)) < share)
    return [tag for _, tag in scored[:max_n]]


def exploration_propensity(candidates: int, share: float, max_n: int) -> float:
    """The probability that :func:`exploratory_pick` picks a given one of ``candidates`` tags.

    Each candidate's hash is uniform on [0, 1); a tag is picked when its hash is under ``share``
    and at most ``max_n - 1`` of the other candidates' hashes are smaller. With one candidate, or
    no cap in reach, it is ``share``; with many candidates and ``max_n = 1`` about ``1 / candidates``.

    >>> exploration_propensity(1, 0.3, 1)
    0.3
    >>> round(exploration_propensity(10, 0.3, 1), 4)  # (1 - 0.7**10) / 10
    0.0972
    >>> round(exploration_propensity(2, 0.3, 5), 4)
    0.3
    """
    k, s = max(int(candidates), 1), min(max(share, 0.0), 1.0)
    if max_n <= 0 or s == 0.0:
        return 0.0
    if k <= max_n:
        return s
    # ∫_0^s P(fewer than max_n of the k-1 others fall below u) du, by the midpoint rule (smooth
    # polynomial integrand: 400 points are exact to ~1e-6).
    steps = 400
    total = 0.0
    for i in range(steps):
        u = (i + 0.5) * s / steps
        total += sum(math.comb(k - 1, j) * u**j * (1.0 - u) ** (k - 1 - j) for j in range(max_n))
    return total * s / steps


@dataclass(frozen=True)
class ListingSums:
    """Per-listing sums of squares of a rate's numerator ``x`` and denominator ``n`` over an arm's
    listings (Σx², Σn², Σx·n): what the listing-clustered variance of the rate needs."""

    x_sq: float = 0.0
    n_sq: float = 0.0
    x_n: float = 0.0


@dataclass(frozen=True)
class ArmStats:
    """What one arm (champion or candidate) did during the canary.

    ``requests`` / ``errors``: listings the arm was asked to tag and how many of them failed;
    ``latency_p99_ms``: its tagging latency, ``None`` when not measured; ``listings``: the
    listings whose shown tags got feedback (the feedback figures are over these).
    ``ctr_sums`` / ``acceptance_sums``: per-listing sums of squares of clicks and impressions,
    of accepts and judgements (``None``: not known; the rates are then tested as independent trials).
    """

    impressions: int = 0
    clicks: int = 0
    accepts: int = 0
    rejects: int = 0
    requests: int = 0
    errors: int = 0
    latency_p99_ms: float | None = None
    listings: int = 0  # listings whose shown tags got feedback
    ctr_sums: ListingSums | None = None
    acceptance_sums: ListingSums | None = None

    @property
    def judgements(self) -> int:
        return self.accepts + self.rejects

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


Action = Literal["promote", "rollback", "wait"]


@dataclass(frozen=True)
class CanaryVerdict:
    action: Action
    reasons: list[str] = field(default_factory=list)


def one_sided_p_worse(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> float:
    """p-value of "rate b is lower than rate a" by a pooled two-proportion z-test (small: b is worse).

    >>> round(one_sided_p_worse(100, 1000, 60, 1000), 4)
    0.0005
    >>> one_sided_p_worse(5, 10, 5, 10)
    0.5
    """
    if trials_a <= 0 or trials_b <= 0:
        raise ValueError("both arms need trials")
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / trials_a + 1.0 / trials_b))
    return _p_lower(successes_b / trials_b - successes_a / trials_a, se)


def _p_lower(difference: float, se: float) -> float:
    """Φ(difference / se): the one-sided p-value of "lower"; 0.5 without spread (no evidence either way)."""
    if se == 0.0:
        return 0.5
    return 0.5 * math.erfc(-difference / se / math.sqrt(2.0))


def rate_variance(successes: int, trials: int, listings: int, sums: ListingSums | None) -> float:
    """Variance of the rate ``successes / trials`` when trials come in clusters (listings).

    A listing's impressions are not independent trials: all of a shown tag's impressions are of
    one (right or wrong) tag, so clicks come in clumps and the binomial variance understates the
    noise (a canary test on it rolls back equal candidates far more often than its level says).
    The delta method over listings (the rate as a ratio of per-listing means) gives the honest
    variance; it is never taken below the binomial one, so a lucky sample cannot claim more
    certainty than independent trials would.

    >>> rate_variance(10, 100, 0, None) == 0.1 * 0.9 / 100   # no listing sums: binomial
    True
    >>> clumped = ListingSums(x_sq=10 * 5**2, n_sq=20 * 5**2, x_n=10 * 5**2)  # 20 listings × 5, 10 all clicked
    >>> round(rate_variance(50, 100, 20, clumped) / rate_variance(50, 100, 20, None), 2)
    5.26
    """
    rate = successes / trials
    binomial = rate * (1.0 - rate) / trials
    if sums is None or listings < 2:
        return binomial
    residual = sums.x_sq - 2.0 * rate * sums.x_n + rate * rate * sums.n_sq  # Σ (x_i − rate·n_i)²
    clustered = max(residual, 0.0) / (trials * trials) * listings / (listings - 1)
    return max(clustered, binomial)


def p_worse_clustered(champion: tuple[int, int, ListingSums | None], candidate: tuple[int, int, ListingSums | None],
                      listings: tuple[int, int]) -> float:
    """One-sided p-value of "the candidate's rate is lower" with listing-clustered variances
    (:func:`rate_variance`); each arm is (successes, trials, sums).

    >>> round(p_worse_clustered((100, 1000, None), (60, 1000, None), (0, 0)), 4)
    0.0005
    """
    (s_a, n_a, sums_a), (s_b, n_b, sums_b) = champion, candidate
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both arms need trials")
    se = math.sqrt(rate_variance(s_a, n_a, listings[0], sums_a) + rate_variance(s_b, n_b, listings[1], sums_b))
    return _p_lower(s_b / n_b - s_a / n_a, se)


def canary_verdict(champion: ArmStats, candidate: ArmStats, settings: TrainerSettings) -> CanaryVerdict:
    """Promote, roll back or wait, with every reason.

    Order of the rules:

    1. **rollback** on operations, at any sample size: the candidate's errors exceed
       ``canary_max_error_rate`` of ``max(requests, canary_min_requests)`` (so a few early
       errors cannot decide alone, but enough of them do before the minimum is reached); or,
       with ≥ ``canary_min_requests`` (and ≥ 100: a p99 needs them) requests on both arms, candidate p99 latency over
       ``canary_max_p99_latency_ratio`` × the champion's, or, with feedback on ≥ ``canary_min_requests``
       listings of each arm, candidate impressions per listing under ``canary_min_exposure_ratio``
       × the champion's (it shows far fewer tags per listing, which CTR and acceptance of the few
       tags it shows cannot see).
    2. **rollback** when CTR or acceptance rate is *worse beyond noise*: a one-sided z-test of
       "candidate rate < champion rate" has p < ``canary_alpha`` / (rates tested), Bonferroni, so
       that an equal candidate is rolled back with probability ≤ ``canary_alpha`` (not ``α`` per
       rate); each arm's variance is clustered by listing where the per-listing sums are known
       (:func:`p_worse_clustered`), else the pooled two-proportion test (:func:`one_sided_p_worse`).
       Each rate is tested once both arms have its minimum sample (``canary_min_impressions``
       impressions for CTR, ``canary_min_judgements`` merchant judgements for acceptance, and
       feedback on ``canary_min_listings`` listings for either: the listing is what routing
       randomises, and a handful of listings' impressions are a handful of draws, whatever their
       number), so a clearly worse CTR rolls back without waiting for judgements (fail fast).
    3. **wait** while either arm is short of either minimum (pass slow).
    4. **promote** otherwise: not worse on CTR and acceptance over the minimum sample.
    """
    cfg = settings
    reasons: list[str] = []
    allowed_errors = cfg.canary_max_error_rate * max(candidate.requests, cfg.canary_min_requests)
    error_line = (
        f"candidate errors {candidate.errors}/{candidate.requests} ({candidate.error_rate:.2%}), "
        f"limit {cfg.canary_max_error_rate:.2%}"
    )
    if candidate.errors > allowed_errors:
        return CanaryVerdict("rollback", [f"FAIL errors: {error_line}"])
    reasons.append(f"PASS errors: {error_line}")
    if _latency_check(champion, candidate, cfg, reasons) or _exposure_check(champion, candidate, cfg, reasons):
        return CanaryVerdict("rollback", reasons)

    worse, short = False, []
    metrics = [("CTR", "impressions", cfg.canary_min_impressions, champion.clicks, champion.impressions,
                candidate.clicks, candidate.impressions, champion.ctr_sums, candidate.ctr_sums)]  # fmt: skip
    if cfg.canary_min_judgements > 0 or (champion.judgements and candidate.judgements):
        metrics.append(("acceptance", "judgements", cfg.canary_min_judgements, champion.accepts, champion.judgements,
                        candidate.accepts, candidate.judgements, champion.acceptance_sums,
                        candidate.acceptance_sums))  # fmt: skip
    else:
        reasons.append("SKIP acceptance: no merchant judgements and canary_min_judgements = 0")
    arms = (("champion", champion), ("candidate", candidate))
    too_few_listings = [f"{name} has feedback on {arm.listings} listings < {cfg.canary_min_listings}"
                        for name, arm in arms if arm.listings < cfg.canary_min_listings]  # fmt: skip
    for name, unit, minimum, s_a, n_a, s_b, n_b, sums_a, sums_b in metrics:
        missing = [f"{arm} has {n} {unit} < {minimum}" for arm, n in (("champion", n_a), ("candidate", n_b))
                   if n < max(minimum, 1)]  # fmt: skip
        if missing or too_few_listings:
            short += [m for m in (*missing, *too_few_listings) if m not in short]
            continue
        p = (one_sided_p_worse(s_a, n_a, s_b, n_b) if sums_a is None or sums_b is None else
             p_worse_clustered((s_a, n_a, sums_a), (s_b, n_b, sums_b), (champion.listings, candidate.listings)))
        level = cfg.canary_alpha / len(metrics)  # Bonferroni: α is the chance of rolling back an equal candidate
        bad = p < level
        worse |= bad
        reasons.append(
            f"{'FAIL' if bad else 'PASS'} {name}: candidate {s_b / n_b:.4f} ({n_b}) "
            f"vs champion {s_a / n_a:.4f} ({n_a}), "
            f"one-sided p(worse) = {p:.4f} {'<' if bad else '≥'} α {level:g}"
        )
    if worse:
        return CanaryVerdict("rollback", reasons)
    if short:
        return CanaryVerdict("wait", [*reasons, "WAIT sample: " + "; ".join(short)])
    return CanaryVerdict("promote", reasons)


# The p99 of fewer requests is their maximum: one stall (a cold batch, a busy core) decides. A demo
# canary was rolled back on p99 802 vs 520 ms over its first ~10 requests per arm.
P99_MIN_REQUESTS = 100


def _latency_check(champion: ArmStats, candidate: ArmStats, cfg: TrainerSettings, reasons: list[str]) -> bool:
    """Append the latency reason; true when the candidate is too slow (p99 over ≥ ``P99_MIN_REQUESTS``)."""
    a, b = champion.latency_p99_ms, candidate.latency_p99_ms
    needed = max(cfg.canary_min_requests, P99_MIN_REQUESTS)
    if a is None or b is None or a <= 0 or min(champion.requests, candidate.requests) < needed:
        reasons.append(f"SKIP latency: needs p99 of both arms and ≥ {needed} requests each")
        return False
    ratio = b / a
    bad = ratio > cfg.canary_max_p99_latency_ratio
    reasons.append(
        f"{'FAIL' if bad else 'PASS'} latency: candidate p99 {b:.1f} ms vs champion {a:.1f} ms "
        f"(ratio {ratio:.2f}, limit {cfg.canary_max_p99_latency_ratio:g})"
    )
    return bad


def _exposure_check(champion: ArmStats, candidate: ArmStats, cfg: TrainerSettings, reasons: list[str]) -> bool:
    """Append the exposure reason; true when the candidate shows far fewer tags per listing.

    Listings go to the arms by a hash of their id, so shoppers see both arms' listings alike and
    impressions per listing measure how many tags an arm shows on a listing.
    """
    if min(champion.listings, candidate.listings) < cfg.canary_min_requests or champion.impressions <= 0:
        reasons.append(f"SKIP exposure: needs feedback on ≥ {cfg.canary_min_requests} listings per arm")
        return False
    mine, theirs = candidate.impressions / candidate.listings, champion.impressions / champion.listings
    ratio = mine / theirs
    bad = ratio < cfg.canary_min_exposure_ratio
    reasons.append(
        f"{'FAIL' if bad else 'PASS'} exposure: candidate {mine:.2f} impressions per listing vs champion "
        f"{theirs:.2f} (ratio {ratio:.2f}, minimum {cfg.canary_min_exposure_ratio:g})"
    )
    return bad
