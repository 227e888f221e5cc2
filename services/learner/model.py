"""The online engagement model: pure river estimators and the stream-level :class:`AffinityModel`.

Two layers, both free of I/O:

* :class:`UserTagClassifier` is a river classifier of P(engagement | user, tag) on
  ``{"user": ..., "tag": ...}`` dicts. It wraps either a factorization machine
  (``river.facto.FMClassifier`` on one-hot user and tag) or a hashed logistic
  regression (``FeatureHasher | LogisticRegression`` on user, tag and user×tag).
* :class:`AffinityModel` turns feedback events into labelled (user, tag) samples:
  engagements are weighted positives, impressions become negatives once no
  engagement followed within a window, duplicates (by ``event_id``) are dropped,
  and events of listings whose tags are not known yet wait for them.

Examples
--------
>>> clf = UserTagClassifier(kind="lr")
>>> clf.learn_one({"user": "u1", "tag": "shoes"}, True)
>>> clf.predict_proba_one({"user": "u1", "tag": "shoes"})[True] > 0.5
True
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from river import base, facto, linear_model, optim, preprocessing

from services.learner.features import (
    IGNORED_TYPES,
    NEGATIVE_WEIGHT,
    Features,
    ModelKind,
    engagement_weight,
    featurizer,
    is_engagement,
    lr_features,
    tag_only_features,
)
from shared.events import FeedbackEvent, FeedbackType

# Showing a listing again and again to someone who ignores it says less each time.
MAX_REPEATED_NEGATIVES = 5


def sigmoid(z: float) -> float:
    """Logistic function, safe on both tails."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class HashedLogisticRegression(base.Classifier):
    """Logistic regression by SGD on hashed features, in plain dicts.

    The same model as ``FeatureHasher | LogisticRegression`` in river (log loss, SGD,
    bounded hashed weight space), without the pipeline's per-sample overhead: the
    learner must keep up with ~10k events/s on one core. Hashing is crc32 (stable
    across processes, unlike ``hash()``), so pickled weights stay valid after a restart.

    Parameters
    ----------
    n_features
        Number of hash buckets.
    learning_rate
        SGD step of the weights.
    l2
        L2 penalty, applied to the weights a sample touches.
    intercept_lr
        SGD step of the intercept.
    clip
        Bound on the absolute gradient of one sample.
    adagrad
        Per-weight step sizes ``learning_rate / sqrt(sum of squared gradients)``: rare
        features (one user's cross with one tag) still move fast, frequent ones settle.
    seed
        Start value of the hash (different seeds, different collisions).
    """

    def __init__(
        self,
        n_features: int = 2**22,
        learning_rate: float = 0.05,
        l2: float = 0.0,
        intercept_lr: float = 0.005,
        clip: float = 1e3,
        adagrad: bool = False,
        seed: int = 42,
    ):
        self.n_features = n_features
        self.learning_rate = learning_rate
        self.l2 = l2
        self.intercept_lr = intercept_lr
        self.clip = clip
        self.adagrad = adagrad
        self.seed = seed
        self.weights: dict[int, float] = {}
        self.sq_grads: dict[int, float] = {}
        self.intercept = 0.0

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}

    def _indices(self, x: dict[str, Any]) -> list[tuple[int, float]]:
        return [(zlib.crc32(str(k).encode(), self.seed) % self.n_features, float(v)) for k, v in x.items() if v]

    def _proba(self, indexed: list[tuple[int, float]]) -> float:
        return sigmoid(self.intercept + sum(self.weights.get(i, 0.0) * v for i, v in indexed))

    def weight(self, name: str) -> float:
        """The weight of one feature of value 1 (read-only)."""
        return self.weights.get(zlib.crc32(name.encode(), self.seed) % self.n_features, 0.0)

    def index(self, name: str) -> int:
        """Bucket of a feature name."""
        return zlib.crc32(name.encode(), self.seed) % self.n_features

    def learn_one(self, x: dict[str, Any], y: base.typing.ClfTarget, w: float = 1.0) -> None:  # type: ignore[override]
        self.learn_indexed(self._indices(x), y, w)

    def learn_indexed(self, indexed: list[tuple[int, float]], y: base.typing.ClfTarget, w: float = 1.0) -> None:
        """``learn_one`` on already hashed features (callers that reuse a hash across samples)."""
        g = (self._proba(indexed) - float(bool(y))) * w
        g = max(-self.clip, min(self.clip, g))
        weights, lr, l2 = self.weights, self.learning_rate, self.l2
        for i, v in indexed:
            old = weights.get(i, 0.0)
            grad = g * v + l2 * old
            if self.adagrad:
                acc = self.sq_grads.get(i, 0.0) + grad * grad
                self.sq_grads[i] = acc
                weights[i] = old - lr * grad / math.sqrt(acc + 1e-8)
            else:
                weights[i] = old - lr * grad
        self.intercept -= self.intercept_lr * g

    def predict_proba_one(self, x: dict[str, Any]) -> dict[bool, float]:  # type: ignore[override]
        p = self._proba(self._indices(x))
        return {False: 1.0 - p, True: p}

    def learn_unit(self, indices: tuple[int, ...], y: bool, w: float = 1.0) -> None:
        """``learn_indexed`` for features of value 1 (the learner's hot path, kept lean)."""
        weights = self.weights
        z = self.intercept
        for i in indices:
            z += weights.get(i, 0.0)
        g = (sigmoid(z) - (1.0 if y else 0.0)) * w
        g = max(-self.clip, min(self.clip, g))
        lr, l2 = self.learning_rate, self.l2
        if self.adagrad:
            sq = self.sq_grads
            for i in indices:
                old = weights.get(i, 0.0)
                grad = g + l2 * old
                acc = sq.get(i, 0.0) + grad * grad
                sq[i] = acc
                weights[i] = old - lr * grad / math.sqrt(acc + 1e-8)
        else:
            for i in indices:
                old = weights.get(i, 0.0)
                weights[i] = old - lr * (g + l2 * old)
        self.intercept -= self.intercept_lr * g


class UserTagClassifier(base.Classifier):
    """P(engagement | user, tag) as a river classifier on ``{"user": str, "tag": str}``.

    Parameters
    ----------
    kind
        ``"lr"``: hashed logistic regression on user, tag and user×tag
        (:class:`HashedLogisticRegression`); ``"lr-river"``: the same model as river's
        ``FeatureHasher | LogisticRegression`` (slower); ``"fm"``: river's factorization
        machine on one-hot user and tag.
    learning_rate
        SGD step of the weights (and of the latent factors for ``"fm"``).
    l2
        L2 penalty of the weights.
    n_factors
        Latent dimension of the factorization machine.
    n_hash_features
        Size of the hashed feature space of the logistic regression (bounded memory).
    seed
        Seed of the hasher and of the latent initialisation.

    Notes
    -----
    ``predict_proba_one`` never mutates the model: river's FM creates latent
    vectors for unseen features on *prediction*, so unseen users and tags are
    dropped from the features before predicting (an unseen user gets the tag's
    prior, an unseen tag the intercept).
    """

    def __init__(
        self,
        kind: ModelKind = "lr",
        learning_rate: float = 0.05,
        l2: float = 0.0,
        n_factors: int = 8,
        n_hash_features: int = 2**22,
        adagrad: bool = False,
        seed: int = 42,
    ):
        self.kind = kind
        self.adagrad = adagrad
        self.learning_rate = learning_rate
        self.l2 = l2
        self.n_factors = n_factors
        self.n_hash_features = n_hash_features
        self.seed = seed
        self._featurize = featurizer(kind)
        self.model: Any = self._build()
        self.users: set[str] = set()
        self.tags: set[str] = set()

    def _build(self) -> Any:  # a river classifier or pipeline
        if self.kind == "lr":
            return HashedLogisticRegression(
                n_features=self.n_hash_features,
                learning_rate=self.learning_rate,
                l2=self.l2,
                intercept_lr=self.learning_rate / 10,
                adagrad=self.adagrad,
                seed=self.seed,
            )
        if self.kind == "fm":

            def optimizer() -> optim.base.Optimizer:
                return optim.AdaGrad(self.learning_rate) if self.adagrad else optim.SGD(self.learning_rate)

            return facto.FMClassifier(
                n_factors=self.n_factors,
                weight_optimizer=optimizer(),
                latent_optimizer=optimizer(),
                l2_weight=self.l2,
                l2_latent=self.l2,
                intercept_lr=self.learning_rate / 10,
                seed=self.seed,
            )
        hasher = preprocessing.FeatureHasher(n_features=self.n_hash_features, seed=self.seed)
        return hasher | linear_model.LogisticRegression(
            optimizer=optim.SGD(self.learning_rate), l2=self.l2, intercept_lr=self.learning_rate / 10
        )

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"kind": "lr"}
        yield {"kind": "lr-river"}
        yield {"kind": "fm"}

    def features(self, x: dict[str, Any]) -> Features:
        """The feature dict the inner model sees, restricted to what it has learned."""
        user, tag = str(x.get("user", "")), str(x.get("tag", ""))
        if user in self.users and tag in self.tags:
            return self._featurize(user, tag)
        if tag in self.tags:
            return tag_only_features(tag)
        return {}

    def learn_one(self, x: dict[str, Any], y: base.typing.ClfTarget, w: float = 1.0) -> None:  # type: ignore[override]
        user, tag = str(x["user"]), str(x["tag"])
        self.model.learn_one(self._featurize(user, tag), bool(y), w=w)
        self.users.add(user)
        self.tags.add(tag)

    def predict_proba_one(self, x: dict[str, Any]) -> dict[bool, float]:  # type: ignore[override]
        p = float(self.model.predict_proba_one(self.features(x)).get(True, 0.5))
        return {False: 1.0 - p, True: p}

    def learn_user_tags(self, user: str, tags: Iterable[str], y: bool, w: float = 1.0) -> None:
        """``learn_one`` for one user and several tags; the LR hashes the user once."""
        m = self.model
        if not isinstance(m, HashedLogisticRegression) or self._featurize is not lr_features:
            for tag in tags:
                self.learn_one({"user": user, "tag": tag}, y, w=w)
            return
        user_index = m.index(f"user={user}")
        # crc32 is incremental: hash the cross's "user×tag={user}|" prefix once, then each tag
        # on top of it; same buckets as index(f"user×tag={user}|{tag}"), a third of the hashing.
        cross = zlib.crc32(f"user×tag={user}|".encode(), m.seed)
        n, crc32 = m.n_features, zlib.crc32
        for tag in tags:
            m.learn_unit((user_index, m.index(f"tag={tag}"), crc32(tag.encode(), cross) % n), y, w)
            self.tags.add(tag)
        self.users.add(user)

    def proba_many(self, users: Sequence[str], tags: Sequence[str]) -> list[float]:
        """P(engagement) for each ``(users[i], tags[i])``: what ``predict_proba_one`` gives, faster.

        Serving ranks hundreds of candidates per request; for the hashed LR the sum
        of the three weights is read directly instead of building feature dicts.
        """
        m = self.model
        if not isinstance(m, HashedLogisticRegression) or self._featurize is not lr_features:
            return [self.predict_proba_one({"user": u, "tag": t})[True] for u, t in zip(users, tags, strict=True)]
        out = []
        # Top-k asks for one user × many tags (or the reverse): read each single weight once,
        # and hash each user's cross prefix once (see learn_user_tags).
        tag_w: dict[str, float] = {}
        user_w: dict[str, tuple[float, int]] = {}
        weights, n, seed, crc32 = m.weights, m.n_features, m.seed, zlib.crc32
        for user, tag in zip(users, tags, strict=True):
            z = m.intercept
            if tag in self.tags:
                if tag not in tag_w:
                    tag_w[tag] = m.weight(f"tag={tag}")
                z += tag_w[tag]
                if user in self.users:
                    if user not in user_w:
                        user_w[user] = (m.weight(f"user={user}"), crc32(f"user×tag={user}|".encode(), seed))
                    w_user, cross = user_w[user]
                    z += w_user + weights.get(crc32(tag.encode(), cross) % n, 0.0)
            out.append(sigmoid(z))
        return out


def _ts(event: FeedbackEvent) -> float:
    return event.ts.timestamp()


@dataclass
class Counters:
    """What the model has done, persisted with it (so "seen once" is checkable after a crash)."""

    events_seen: int = 0  # distinct feedback events accepted (each event_id once)
    duplicates: int = 0
    positives: int = 0  # (user, tag) positive updates
    negatives: int = 0  # (user, tag) negative updates
    ignored: int = 0  # tag_accept / tag_reject: not shopper engagement
    cancelled_impressions: int = 0  # impressions followed by an engagement: not negatives
    waiting_dropped: int = 0  # samples whose listing's tags never came within the buffer bound

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RecentIds:
    """The event ids seen lately, in two generations of sets: O(1) per id, whatever the window.

    Remembers at least the last ``window`` ids and at most ``2 * window``. (A dict
    evicted from its front with ``next(iter(d))`` costs O(deleted prefix) per call in
    CPython: ~100 µs per event with a 200k window, more than learning itself.)
    """

    def __init__(self, window: int):
        self.window = window
        self.current: set[str] = set()
        self.previous: set[str] = set()

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` is remembered; otherwise remember it and return False."""
        if event_id in self.current or event_id in self.previous:
            return True
        self.current.add(event_id)
        if len(self.current) >= self.window:
            self.previous, self.current = self.current, set()
        return False

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)


@dataclass
class _Waiting:
    user: str
    label: bool
    weight: float


@dataclass
class AffinityModel:
    """Online user×tag affinity learned from feedback events; pickles whole into a checkpoint.

    Parameters
    ----------
    classifier
        The river estimator of P(engagement | user, tag).
    impression_window_s
        An impression becomes a negative once the stream's event time has moved this
        far past it without an engagement of the same user on the same listing.
    dedup_window
        At least this many recent ``event_id`` values (at most twice as many) are
        remembered to drop duplicates.
    max_pending
        Bound on impressions held back and on samples waiting for their listing's tags.
    max_tags_per_listing
        Only the highest-scored tags of a listing are learned on (bounds cost per event).
    """

    classifier: UserTagClassifier = field(default_factory=UserTagClassifier)
    impression_window_s: float = 1800.0
    dedup_window: int = 200_000
    max_pending: int = 200_000
    max_tags_per_listing: int = 5
    counters: Counters = field(default_factory=Counters)
    listing_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _recent_ids: RecentIds = field(init=False)
    # (user, listing) -> (first ts, tag that surfaced it, how many times shown), oldest first.
    # An OrderedDict, not a dict: the flush pops from the front, O(1) here but O(deleted
    # prefix) on a dict (~40 µs per event with 35k pending impressions).
    _impressions: OrderedDict[tuple[str, str], tuple[float, str | None, int]] = field(default_factory=OrderedDict)
    # listing -> samples waiting for its tags, oldest listing first (dropped first when full).
    _waiting: OrderedDict[str, list[_Waiting]] = field(default_factory=OrderedDict)
    _n_waiting: int = 0
    _watermark: float = -math.inf

    def __post_init__(self) -> None:
        self._recent_ids = RecentIds(self.dedup_window)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints pickled before RecentIds / the OrderedDict still restore.
        if isinstance(state.get("_recent_ids"), dict):
            recent = RecentIds(state["dedup_window"])
            recent.current = set(state["_recent_ids"])
            state["_recent_ids"] = recent
        for name in ("_impressions", "_waiting"):
            if not isinstance(state.get(name), OrderedDict):
                state[name] = OrderedDict(state.get(name, {}))
        self.__dict__.update(state)

    @property
    def name(self) -> str:
        return f"river-{self.classifier.kind}"

    # ---- learning -------------------------------------------------------------------------------

    def set_listing_tags(self, listing_id: str, tags: Sequence[tuple[str, float]] | None) -> set[str]:
        """Record a listing's tags (``None`` deletes it); returns users whose waiting samples were learned."""
        if tags is None:
            self.listing_tags.pop(listing_id, None)
            return set()
        best = sorted(tags, key=lambda t: -t[1])[: self.max_tags_per_listing]
        self.listing_tags[listing_id] = tuple(t for t, _ in best)
        touched: set[str] = set()
        for sample in self._waiting.pop(listing_id, []):
            self._n_waiting -= 1
            self._learn_sample(sample.user, self.listing_tags[listing_id], sample.label, sample.weight)
            touched.add(sample.user)
        return touched

    def learn(self, event: FeedbackEvent, tags: Sequence[str] | None = None) -> set[str]:
        """Learn from one feedback event; returns the users whose affinities changed.

        ``tags`` overrides the listing's known tags (offline evaluation passes them).
        A duplicate ``event_id`` within the window changes nothing but a counter.
        """
        if self._is_duplicate(event.event_id):
            self.counters.duplicates += 1
            return set()
        self.counters.events_seen += 1
        self._watermark = max(self._watermark, _ts(event))
        touched = self._flush_impressions(self._watermark - self.impression_window_s)
        if event.type in IGNORED_TYPES:
            self.counters.ignored += 1
        elif event.type == FeedbackType.IMPRESSION:
            key = (event.user_id, event.listing_id)
            first, _, shown = self._impressions.get(key, (_ts(event), None, 0))
            # Shown again without engagement: one more negative, still due when the first one is.
            self._impressions[key] = (first, event.tag_id, shown + 1)
            if len(self._impressions) > self.max_pending:
                touched |= self._flush_impressions(math.inf, limit=len(self._impressions) - self.max_pending)
        elif is_engagement(event.type):
            if self._impressions.pop((event.user_id, event.listing_id), None) is not None:
                self.counters.cancelled_impressions += 1
            resolved = self._tags_of(event.listing_id, tags, event.tag_id)
            weight = engagement_weight(event.type)
            if resolved:
                self._learn_sample(event.user_id, resolved, True, weight)
                touched.add(event.user_id)
            else:
                self._wait(event.listing_id, _Waiting(event.user_id, True, weight))
        return touched

    def flush(self) -> set[str]:
        """Turn every held-back impression into a negative now (end of an offline stream)."""
        return self._flush_impressions(math.inf)

    def _tags_of(self, listing_id: str, tags: Sequence[str] | None, context_tag: str | None) -> tuple[str, ...]:
        known = tuple(tags) if tags is not None else self.listing_tags.get(listing_id, ())
        if context_tag and context_tag not in known:
            # The tag that surfaced the listing is part of what the shopper engaged with.
            known = (*known, context_tag)
        return known

    def _learn_sample(self, user: str, tags: Sequence[str], label: bool, weight: float) -> None:
        self.classifier.learn_user_tags(user, tags, label, weight)
        if label:
            self.counters.positives += len(tags)
        else:
            self.counters.negatives += len(tags)

    def _flush_impressions(self, before: float, limit: int | None = None) -> set[str]:
        touched: set[str] = set()
        n = 0
        impressions = self._impressions
        while impressions and (limit is None or n < limit):
            user, listing = key = next(iter(impressions))
            ts, context_tag, shown = impressions[key]
            # Arrival order approximates event time; a late one waits behind the head briefly.
            if ts >= before:
                break
            del impressions[key]
            n += 1
            # Shown because of one tag: only that tag was judged and ignored, not the listing's others.
            tags = (context_tag,) if context_tag else self.listing_tags.get(listing)
            # One SGD step per showing (a single step of weight n overshoots), capped.
            for _ in range(min(shown, MAX_REPEATED_NEGATIVES)):
                if tags:
                    self._learn_sample(user, tags, False, NEGATIVE_WEIGHT)
                    touched.add(user)
                else:
                    self._wait(listing, _Waiting(user, False, NEGATIVE_WEIGHT))
        return touched

    def _wait(self, listing_id: str, sample: _Waiting) -> None:
        if self._n_waiting >= self.max_pending:
            # Drop the oldest waiting listing's samples: bounded memory beats unbounded waiting.
            oldest = next(iter(self._waiting))
            dropped = self._waiting.pop(oldest)
            self._n_waiting -= len(dropped)
            self.counters.waiting_dropped += len(dropped)
        self._waiting.setdefault(listing_id, []).append(sample)
        self._n_waiting += 1

    def _is_duplicate(self, event_id: str) -> bool:
        return self._recent_ids.seen(event_id)

    # ---- serving (read-only) --------------------------------------------------------------------

    @property
    def users(self) -> set[str]:
        return self.classifier.users

    @property
    def tags(self) -> set[str]:
        return self.classifier.tags

    def score(self, user: str, tag: str) -> float:
        """P(engagement | user, tag); a prior for unseen users or tags. Never mutates the model."""
        return self.classifier.predict_proba_one({"user": user, "tag": tag})[True]

    def top_tags(self, user: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` tags this user most likely engages with, best first (ties by tag id)."""
        tags = list(self.tags)
        scored = zip(self.classifier.proba_many([user] * len(tags), tags), tags, strict=True)
        return [(t, s) for s, t in heapq.nsmallest(k, scored, key=lambda st: (-st[0], st[1]))]

    def top_users(self, tag: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` users most likely to engage with this tag, best first (ties by user id)."""
        users = list(self.users)
        scored = zip(self.classifier.proba_many(users, [tag] * len(users)), users, strict=True)
        return [(u, s) for s, u in heapq.nsmallest(k, scored, key=lambda su: (-su[0], su[1]))]

    def stats(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "users": len(self.users),
            "tags": len(self.tags),
            "listings": len(self.listing_tags),
            "pending_impressions": len(self._impressions),
            "waiting_for_tags": self._n_waiting,
            **self.counters.as_dict(),
        }
