"""Feedback counters -> training labels, the replay mix and a training set's fingerprint (no I/O).

The label builder's adapter reads one :class:`FeedbackRow` per (listing, tag) from the view the
feedback service owns; :func:`build_labels` turns them into :class:`Label` rows.

Rules (thresholds and weights in :class:`~shared.settings.TrainerSettings`)
--------------------------------------------------------------------------
* **Strong** -- merchant ``tag_accept`` / ``tag_reject`` on the tag. When both happened, the
  *latest* wins if both timestamps are known and differ, else the *majority*; a tie gives **no
  label at all** (merchants who know the product disagree: shopper behaviour cannot settle it).
  A strong label has weight ``strong_label_weight`` and hides any weak evidence of the pair.
* **Weak** -- shopper behaviour, judged as a *rate* against the window's own: a row's engaged
  shoppers (the most of its clicks, carts and purchases: one shopper's click, cart and purchase
  are one shopper) over its examined impressions, against ``weak_label_coec`` × the pooled rate
  of every row in the window (clicks over expected clicks, COEC). **Positive** when the Wilson
  lower bound (``weak_label_z``) of the row's rate is at or above that line, **negative** when the
  upper bound is below it, no label in between. So the evidence a label needs grows with how
  close the rate is to the line, whatever the traffic: a click on a tag seen twice is a positive,
  one stray click deep down a page seen thirty times is not, and a wrong tag's clicks over
  thousands of impressions are a negative (a count threshold made it a positive). Measured on a
  demo run's rows: with "engagement ≥ 2, one position-weighted click enough", 16.4 % of the weak
  positives were wrong; with this rule 3.2 % (and 7.3 % of the negatives, against 8.5 %).
* A weak label weighs ``weak_label_weight``. Exploratory tags are labelled like any other; the
  flag is kept so that :func:`composition` can count them.
* **How likely it is right.** :func:`build_labels` then multiplies each weight by P(label right):
  the share of right tags among shown and among explored tags, from the merchants' acceptance
  rate corrected for ``merchant_error_rate`` (:func:`tag_priors`), and each source's error rate
  (:func:`posterior_right`). Explored guesses are mostly wrong, so an accept of one is weighed by
  how rarely guesses are right. Measured on demo runs' rows (guesses 99 % wrong): refitting one
  run's labels went from −0.2 to +0.35 golden micro-F1 points over its champion (with a fit that
  calibrated on catalog rows only, since dropped); another run's, with today's fit, +0.02.

Position bias: a shopper examines position ``k`` (1 = top) with propensity ``1 / k**eta``; an
impression at ``k`` counts ``propensity`` examinations (unknown positions count 1), so a click
deep down a page, where few look, weighs more in the rate. This self-normalised form has the
expectation of weighting each click by ``1 / propensity`` with far less variance from one deep
click (which, weighed alone, made one stray click at slot 5 a positive).

Examples
--------
>>> from shared.settings import TrainerSettings
>>> rows = [FeedbackRow("l1", "t1", impressions=5, rejects=1),
...         FeedbackRow("l1", "t2", impressions=100),               # seen 100 times, never engaged
...         FeedbackRow("l2", "t1", impressions=9, clicks=3, carts=1),
...         FeedbackRow("l3", "t1", impressions=40, clicks=1)]      # one click in 40: says nothing
>>> round(pooled_rate(rows), 3)  # engaged shoppers per impression; the line is half of it
0.026
>>> [(x.listing_id, x.tag_id, x.label, x.weight, x.kind.value) for x in build_labels(rows, TrainerSettings())]
[('l1', 't1', 0, 1.0, 'strong'), ('l1', 't2', 0, 0.5, 'weak'), ('l2', 't1', 1, 0.5, 'weak')]
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

import numpy as np

from shared.settings import TrainerSettings


class LabelKind(StrEnum):
    STRONG = "strong"  # a merchant's accept/reject
    WEAK = "weak"  # shopper behaviour
    REPLAY = "replay"  # sampled from the original labelled data


@dataclass(frozen=True)
class FeedbackRow:
    """Aggregated feedback of one tag shown on one listing (what the feedback view returns).

    ``examined_impressions`` is Σ :func:`examination_propensity` over the impressions (1 per
    event of unknown position); ``None`` means positions are unknown and the raw count is used.
    """

    listing_id: str
    tag_id: str
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    accepts: int = 0
    rejects: int = 0
    examined_impressions: float | None = None
    exploratory: bool = False
    last_accept_at: datetime | None = None
    last_reject_at: datetime | None = None
    model_version: str | None = None  # the version whose tags the listing showed (None: not known)

    def __post_init__(self) -> None:
        counts = (self.impressions, self.clicks, self.carts, self.purchases, self.accepts, self.rejects)
        if min(counts) < 0 or (self.examined_impressions or 0.0) < 0:
            raise ValueError(f"negative count in feedback row {self.listing_id}/{self.tag_id}")


@dataclass(frozen=True)
class Label:
    """One training label: is ``tag_id`` right for ``listing_id`` (1) or not (0), and how much it counts."""

    listing_id: str
    tag_id: str
    label: int
    weight: float
    kind: LabelKind
    exploratory: bool = False
    model_version: str | None = None  # the version that chose to show (or explore) the tag

    @property
    def key(self) -> tuple[str, str]:
        return (self.listing_id, self.tag_id)


def examination_propensity(position: int | None, eta: float = 1.0) -> float:
    """p(examine | position) = ``1 / position**eta``; 1.0 for an unknown position.

    >>> examination_propensity(4, eta=1.0), examination_propensity(None)
    (0.25, 1.0)
    """
    if position is None:
        return 1.0
    if position < 1:
        raise ValueError(f"positions start at 1, got {position}")
    return float(position) ** -eta


def examined_impression_mass(positions: Iterable[int | None], settings: TrainerSettings) -> float:
    """Σ :func:`examination_propensity` over impressions: ``FeedbackRow.examined_impressions``."""
    return sum(examination_propensity(p, settings.propensity_eta) for p in positions)


def engaged_shoppers(row: FeedbackRow) -> int:
    """Shoppers who engaged with the tag: the most of clicks, carts and purchases (one shopper's
    click, cart and purchase are one shopper; a cart without a recorded click still is one)."""
    return max(row.clicks, row.carts, row.purchases)


def examined(row: FeedbackRow) -> float:
    """Examined impressions of a row (impressions where positions are unknown), and at least its
    engaged shoppers: each of them looked, even where the impression was not recorded."""
    seen = row.examined_impressions if row.examined_impressions is not None else float(row.impressions)
    return max(seen, float(engaged_shoppers(row)))


def pooled_rate(rows: Iterable[FeedbackRow]) -> float | None:
    """Engaged shoppers per examined impression over the rows shoppers saw (None: none were seen).

    >>> pooled_rate([FeedbackRow("a", "t", impressions=10, clicks=3), FeedbackRow("b", "t", impressions=30)])
    0.075
    """
    looked = [(examined(r), engaged_shoppers(r)) for r in rows]
    total = sum(n for n, _ in looked if n > 0)
    return sum(e for n, e in looked if n > 0) / total if total > 0 else None


def wilson_interval(successes: float, trials: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a rate (trials may be fractional: examined impressions).

    >>> lo, hi = wilson_interval(3, 10, 1.0)
    >>> round(lo, 3), round(hi, 3)
    (0.179, 0.458)
    >>> wilson_interval(0, 0, 1.0)
    (0.0, 1.0)
    """
    if trials <= 0:
        return 0.0, 1.0
    p = min(successes / trials, 1.0)  # deep clicks can outnumber examinations
    z2 = z * z
    centre = p + z2 / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max((centre - margin) / (1 + z2 / trials), 0.0), min((centre + margin) / (1 + z2 / trials), 1.0)


def merchant_verdict(row: FeedbackRow) -> int | None:
    """1 (accept), 0 (reject) or ``None`` (no judgement, or a tie) -- see the module's rules."""
    if row.accepts == 0 and row.rejects == 0:
        return None
    if row.rejects == 0:
        return 1
    if row.accepts == 0:
        return 0
    if row.last_accept_at is not None and row.last_reject_at is not None and row.last_accept_at != row.last_reject_at:
        return 1 if row.last_accept_at > row.last_reject_at else 0
    if row.accepts == row.rejects:
        return None
    return 1 if row.accepts > row.rejects else 0


def label_row(row: FeedbackRow, settings: TrainerSettings, pooled: float | None = None) -> Label | None:
    """The label of one row, or ``None`` when the evidence is missing, too thin or contradictory.

    ``pooled`` is the window's engaged-shopper rate (:func:`pooled_rate`); without it shopper
    behaviour gives no label (only merchants do).
    """

    def make(label: int, weight: float, kind: LabelKind) -> Label:
        return Label(row.listing_id, row.tag_id, label, weight, kind, row.exploratory, row.model_version)

    if row.accepts or row.rejects:
        verdict = merchant_verdict(row)
        return None if verdict is None else make(verdict, settings.strong_label_weight, LabelKind.STRONG)
    looked = examined(row)
    if pooled is None or pooled <= 0 or looked <= 0:
        return None
    line = settings.weak_label_coec * pooled
    low, high = wilson_interval(engaged_shoppers(row), looked, settings.weak_label_z)
    if low >= line:
        return make(1, settings.weak_label_weight, LabelKind.WEAK)
    if high < line:
        return make(0, settings.weak_label_weight, LabelKind.WEAK)
    return None


def build_labels(rows: Iterable[FeedbackRow], settings: TrainerSettings) -> list[Label]:
    """Labels of all rows that have enough evidence, in input order (one label per row at most);
    shopper behaviour is judged against the pooled rate of these rows, and every label is weighed
    by how likely it is right (:func:`tag_priors`, :func:`posterior_right`)."""
    rows = list(rows)
    pooled = pooled_rate(rows)
    labels = [label for row in rows if (label := label_row(row, settings, pooled)) is not None]
    priors = tag_priors(rows, settings)
    out = []
    for x in labels:
        prior = priors.get(x.exploratory)
        if prior is not None:
            error = settings.merchant_error_rate if x.kind is LabelKind.STRONG else settings.weak_label_error_rate
            x = replace(x, weight=x.weight * posterior_right(x.label, prior, error))
        out.append(x)
    return out


def tag_priors(rows: Sequence[FeedbackRow], settings: TrainerSettings) -> dict[bool, float]:
    """P(tag right) of shown (False) and exploratory (True) tags, from the merchants' verdicts.

    A merchant's verdict is wrong with probability ``merchant_error_rate`` (ε), so an observed
    acceptance rate ``a`` means a share ``(a − ε) / (1 − 2ε)`` of the tags is right. A group with
    fewer than ``label_prior_min_judgements`` verdicts has no prior (its labels keep their weight).

    >>> from shared.settings import TrainerSettings
    >>> rows = [FeedbackRow(f"l{i}", "t", exploratory=True, accepts=int(i < 3), rejects=int(i >= 3)) for i in range(60)]
    >>> tag_priors(rows, TrainerSettings(merchant_error_rate=0.05, label_prior_min_judgements=30))
    {True: 0.001}
    """
    priors: dict[bool, float] = {}
    eps = settings.merchant_error_rate
    for group in (False, True):
        verdicts = [v for r in rows if r.exploratory == group and (v := merchant_verdict(r)) is not None]
        if len(verdicts) >= settings.label_prior_min_judgements:
            accepted = sum(verdicts) / len(verdicts)
            priors[group] = min(max((accepted - eps) / (1 - 2 * eps), PRIOR_FLOOR), 1 - PRIOR_FLOOR)
    return priors


PRIOR_FLOOR = 0.001  # never certain: a group judged all-wrong still lets overwhelming evidence through


def posterior_right(label: int, prior: float, error: float) -> float:
    """P(the label is right | it says ``label``), for a tag right with probability ``prior`` and a
    source wrong with probability ``error`` either way (Bayes).

    Explored guesses are nearly always wrong, so one merchant's accept of a guess is more likely a
    slip than a find; a shown tag is nearly always right, so a reject of it is often the slip:

    >>> round(posterior_right(1, prior=0.01, error=0.05), 3), round(posterior_right(0, prior=0.01, error=0.05), 3)
    (0.161, 0.999)
    >>> round(posterior_right(0, prior=0.95, error=0.05), 3)
    0.5
    """
    right, wrong = (prior, 1 - prior) if label else (1 - prior, prior)
    return right * (1 - error) / (right * (1 - error) + wrong * error)


def replay_count(n_feedback: int, n_original: int, share: float) -> int:
    """How many original labels make ``share`` of a set with ``n_feedback`` feedback labels.

    >>> replay_count(800, 10_000, 0.2), replay_count(800, 50, 0.2), replay_count(0, 100, 0.2)
    (200, 50, 0)
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"replay share must be in [0, 1), got {share}")
    return min(round(share * n_feedback / (1.0 - share)), n_original)


def mix_replay(
    feedback_labels: Sequence[Label], original_labels: Sequence[Label], share: float = 0.2, seed: int = 0
) -> list[Label]:
    """A training set: the feedback labels plus a replay sample of the original labels, stratified by tag.

    The replay sample is ``share`` of the final set (:func:`replay_count`) and each tag gets
    the share of it that the tag has among the original labels (largest-remainder rounding,
    ties by tag id). Original labels of a (listing, tag) that feedback labelled are left out
    (the feedback is newer). Replayed labels keep their label and weight and get kind
    ``replay``. The result is sorted by (listing, tag, kind) and depends only on the inputs'
    contents and ``seed``, not on their order.
    """
    covered = {label.key for label in feedback_labels}
    pool: dict[str, list[Label]] = defaultdict(list)
    for label in sorted(original_labels, key=_sort_key):
        if label.key not in covered:
            pool[label.tag_id].append(label)
    n_pool = sum(len(v) for v in pool.values())
    total = replay_count(len(feedback_labels), n_pool, share)
    rng = np.random.default_rng(seed)
    replayed: list[Label] = []
    for tag_id, quota in _allocate(total, {t: len(v) for t, v in pool.items()}).items():
        picks = rng.choice(len(pool[tag_id]), size=quota, replace=False)
        replayed.extend(replace(pool[tag_id][i], kind=LabelKind.REPLAY) for i in sorted(picks))
    return sorted([*feedback_labels, *replayed], key=_sort_key)


def _allocate(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split ``total`` over strata proportionally to ``sizes`` (largest remainder, ties by name)."""
    n = sum(sizes.values())
    if total <= 0 or n == 0:
        return {}
    exact = {tag: total * size / n for tag, size in sizes.items()}
    quota = {tag: int(x) for tag, x in exact.items()}
    by_remainder = sorted(sizes, key=lambda tag: (-(exact[tag] - quota[tag]), tag))
    for tag in by_remainder[: total - sum(quota.values())]:
        quota[tag] += 1
    return {tag: q for tag, q in sorted(quota.items()) if q > 0}


def _sort_key(label: Label) -> tuple[str, str, str, int, float, bool]:
    return (label.listing_id, label.tag_id, label.kind.value, label.label, label.weight, label.exploratory)


@dataclass(frozen=True)
class TagComposition:
    strong: int = 0
    weak: int = 0
    replayed: int = 0
    positives: int = 0
    negatives: int = 0


@dataclass(frozen=True)
class Composition:
    """What a training set is made of, overall and per tag (stored with the job and the model)."""

    total: int
    strong: int
    weak: int
    replayed: int
    exploratory: int
    positives: int
    negatives: int
    weight: float
    per_tag: dict[str, TagComposition] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form (per-tag entries as plain dicts)."""
        out: dict[str, object] = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "per_tag"}
        out["per_tag"] = {tag: vars(c) for tag, c in sorted(self.per_tag.items())}
        return out


def composition(labels: Iterable[Label]) -> Composition:
    """Counts of strong, weak and replayed labels (and positives, negatives), overall and per tag.

    >>> c = composition([Label("l1", "t", 1, 5.0, LabelKind.STRONG), Label("l2", "t", 0, 1.0, LabelKind.REPLAY)])
    >>> c.strong, c.replayed, c.per_tag["t"].negatives
    (1, 1, 1)
    """
    kinds: Counter[str] = Counter()
    per_tag: dict[str, Counter[str]] = defaultdict(Counter)
    exploratory = 0
    weight = 0.0
    for label in labels:
        kind = "replayed" if label.kind is LabelKind.REPLAY else label.kind.value
        polarity = "positives" if label.label else "negatives"
        kinds.update((kind, polarity))
        per_tag[label.tag_id].update((kind, polarity))
        exploratory += label.exploratory
        weight += label.weight
    names = ("strong", "weak", "replayed", "positives", "negatives")
    return Composition(
        total=kinds["positives"] + kinds["negatives"],
        strong=kinds["strong"],
        weak=kinds["weak"],
        replayed=kinds["replayed"],
        exploratory=exploratory,
        positives=kinds["positives"],
        negatives=kinds["negatives"],
        weight=weight,
        per_tag={tag: TagComposition(**{n: c[n] for n in names}) for tag, c in sorted(per_tag.items())},
    )


def fingerprint(labels: Iterable[Label]) -> str:
    """sha256 of the labels in a canonical sorted form: the same set gives the same hex digest in any order.

    >>> a, b = Label("l1", "t", 1, 1.0, LabelKind.WEAK), Label("l2", "t", 0, 5.0, LabelKind.STRONG)
    >>> fingerprint([a, b]) == fingerprint([b, a]) != fingerprint([a])
    True
    """
    # One JSON array per label: unambiguous whatever characters the ids hold; repr() of a float round-trips.
    lines = sorted(
        json.dumps([x.listing_id, x.tag_id, int(x.label), repr(float(x.weight)), x.kind.value, bool(x.exploratory)])
        for x in labels
    )
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
