"""River-contract and stream-semantics checks of the learner's pure core."""

from __future__ import annotations

import copy
import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.learner.features import engagement_weight, fm_features, lr_features
from services.learner.model import AffinityModel, RecentIds, UserTagClassifier
from shared.events import FeedbackEvent, FeedbackType

KINDS = ["lr", "lr-river", "fm"]
# AdaGrad variants: the configured default (see LearnerSettings).
CLASSIFIERS = [{"kind": k} for k in KINDS] + [{"kind": "lr", "adagrad": True}, {"kind": "fm", "adagrad": True}]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(i: int, user: str, listing: str, kind: FeedbackType, minutes: float = 0, tag: str | None = None):
    return FeedbackEvent(
        event_id=f"e{i}",
        user_id=user,
        listing_id=listing,
        type=kind,
        tag_id=tag,
        ts=T0 + timedelta(minutes=minutes),
    )


def _trained(params: dict[str, Any]) -> UserTagClassifier:
    clf = UserTagClassifier(seed=1, **params)
    for _ in range(30):
        clf.learn_one({"user": "alice", "tag": "shoes"}, True, w=2.0)
        clf.learn_one({"user": "alice", "tag": "pots"}, False)
        clf.learn_one({"user": "bob", "tag": "pots"}, True)
        clf.learn_one({"user": "bob", "tag": "shoes"}, False)
    return clf


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_learns_user_specific_preferences(params: dict[str, Any]) -> None:
    clf = _trained(params)
    p = lambda u, t: clf.predict_proba_one({"user": u, "tag": t})[True]  # noqa: E731
    assert p("alice", "shoes") > p("alice", "pots")
    assert p("bob", "pots") > p("bob", "shoes")
    assert abs(sum(clf.predict_proba_one({"user": "alice", "tag": "shoes"}).values()) - 1.0) < 1e-9


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_predict_does_not_mutate_model_even_for_unseen_features(params: dict[str, Any]) -> None:
    clf = _trained(params)
    before = pickle.dumps(clf)
    for x in (
        {"user": "alice", "tag": "shoes"},
        {"user": "carol", "tag": "shoes"},
        {"user": "zed", "tag": "new"},
    ):
        proba = clf.predict_proba_one(x)
        assert 0.0 <= proba[True] <= 1.0
    assert pickle.dumps(clf) == before


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_inputs_not_mutated(params: dict[str, Any]) -> None:
    clf = UserTagClassifier(**params)
    x = {"user": "u", "tag": "t"}
    original = dict(x)
    clf.learn_one(x, True)
    clf.predict_proba_one(x)
    assert x == original


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_pickle_round_trip_predicts_identically_and_keeps_learning(params: dict[str, Any]) -> None:
    clf = _trained(params)
    restored = pickle.loads(pickle.dumps(clf))
    x = {"user": "alice", "tag": "shoes"}
    assert restored.predict_proba_one(x) == clf.predict_proba_one(x)
    restored.learn_one(x, False)
    clf.learn_one(x, False)
    assert restored.predict_proba_one(x) == pytest.approx(clf.predict_proba_one(x))


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_clone_is_fresh_with_same_params(params: dict[str, Any]) -> None:
    clf = _trained(params)
    fresh = clf.clone()
    assert fresh.kind == params["kind"] and not fresh.users
    assert fresh.predict_proba_one({"user": "alice", "tag": "shoes"})[True] == pytest.approx(0.5)


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_unseen_user_gets_tag_prior(params: dict[str, Any]) -> None:
    clf = _trained(params)
    for _ in range(50):
        clf.learn_one({"user": "x", "tag": "shoes"}, True)
    stranger = clf.predict_proba_one({"user": "stranger", "tag": "shoes"})[True]
    assert stranger > 0.5


def test_feature_functions() -> None:
    assert fm_features("u", "t") == {"user=u": 1.0, "tag=t": 1.0}
    assert lr_features("u", "t")["user×tag=u|t"] == 1.0
    assert engagement_weight(FeedbackType.PURCHASE) > engagement_weight(FeedbackType.ADD_TO_CART) > 0
    assert engagement_weight(FeedbackType.IMPRESSION) == 0


def _model() -> AffinityModel:
    m = AffinityModel(classifier=UserTagClassifier(kind="lr"), impression_window_s=600)
    m.set_listing_tags("l1", [("shoes", 0.9), ("red", 0.5)])
    m.set_listing_tags("l2", [("pots", 0.8)])
    return m


def test_duplicates_are_counted_once() -> None:
    m = _model()
    e = _event(1, "u", "l1", FeedbackType.CLICK)
    assert m.learn(e) == {"u"}
    state = pickle.dumps(m.classifier)
    assert m.learn(e) == set()
    assert pickle.dumps(m.classifier) == state
    assert m.counters.events_seen == 1 and m.counters.duplicates == 1 and m.counters.positives == 2


def test_dedup_window_is_bounded() -> None:
    m = AffinityModel(classifier=UserTagClassifier(kind="lr"), impression_window_s=600, dedup_window=3)
    m.set_listing_tags("l1", [("shoes", 0.9)])
    for i in range(7):
        m.learn(_event(i, "u", "l1", FeedbackType.CLICK))
        assert 3 <= len(m._recent_ids) <= 6 or i < 3  # at least the window, at most twice it
    m.learn(_event(4, "u", "l1", FeedbackType.CLICK))  # within the last 3: a duplicate
    assert m.counters.duplicates == 1
    m.learn(_event(0, "u", "l1", FeedbackType.CLICK))  # forgotten: accepted again
    assert m.counters.duplicates == 1 and m.counters.events_seen == 8


def _per_op_s(op: Callable[[int], object], start: int, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + n):
        op(i)
    return (time.perf_counter() - t0) / n


# Evicting from the front of a plain dict with next(iter(d)) costs O(deleted prefix) per call
# in CPython (~50-100 µs with 50k-200k entries); the model's bounded queues must stay O(1).
def test_dedup_eviction_stays_constant_time() -> None:
    recent = RecentIds(50_000)
    filling = _per_op_s(lambda i: recent.seen(f"e{i}"), 0, 50_000)
    evicting = _per_op_s(lambda i: recent.seen(f"e{i}"), 50_000, 100_000)
    assert evicting < 10 * filling, f"{evicting * 1e6:.1f} µs per id evicting vs {filling * 1e6:.1f} filling"


def test_impression_queue_costs_the_same_long_or_short() -> None:
    def stream(window_s: float) -> float:
        m = AffinityModel(classifier=UserTagClassifier(kind="lr"), impression_window_s=window_s)
        m.set_listing_tags("l1", [("shoes", 0.9)])
        t = T0.timestamp()
        events = [
            FeedbackEvent(event_id=f"e{i}", user_id=f"u{i}", listing_id="l1", type=FeedbackType.IMPRESSION,
                          tag_id="shoes", ts=datetime.fromtimestamp(t + i / 1000, UTC))
            for i in range(100_000)
        ]
        _per_op_s(lambda i: m.learn(events[i]), 0, 50_000)  # a long window fills up here
        cost = _per_op_s(lambda i: m.learn(events[i]), 50_000, 50_000)
        assert m.counters.negatives >= 49_000  # the timed part turns impressions into negatives
        return cost

    short, long = stream(0.0), stream(50.0)  # ~0 vs ~50,000 impressions held back
    assert long < 3 * short, f"{long * 1e6:.1f} µs per event with 50k held back vs {short * 1e6:.1f} with none"


def test_checkpoints_of_the_previous_layout_still_restore() -> None:
    m = _model()
    m.learn(_event(1, "u", "l2", FeedbackType.IMPRESSION))
    m.learn(_event(2, "u", "l1", FeedbackType.CLICK))
    state = dict(m.__dict__)
    # Before RecentIds and the OrderedDicts: plain dicts in the pickled state.
    state["_recent_ids"] = {"e1": None, "e2": None}
    state["_impressions"] = dict(m._impressions)
    state["_waiting"] = {}
    old = AffinityModel.__new__(AffinityModel)
    old.__setstate__(state)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.learn(_event(2, "u", "l1", FeedbackType.CLICK)) == set()  # still a duplicate
    restored.flush()
    assert restored.counters.negatives == 1


def test_impression_without_engagement_becomes_negative_after_window() -> None:
    m = _model()
    m.learn(_event(1, "u", "l2", FeedbackType.IMPRESSION, minutes=0))
    assert m.counters.negatives == 0  # held back: an engagement may still follow
    m.learn(_event(2, "v", "l1", FeedbackType.CLICK, minutes=20))
    assert m.counters.negatives == 1


def test_impression_followed_by_engagement_is_not_negative() -> None:
    m = _model()
    m.learn(_event(1, "u", "l2", FeedbackType.IMPRESSION))
    m.learn(_event(2, "u", "l2", FeedbackType.ADD_TO_CART, minutes=1))
    m.learn(_event(3, "v", "l1", FeedbackType.CLICK, minutes=60))
    assert m.counters.negatives == 0 and m.counters.cancelled_impressions == 1


def test_tag_surfaced_impression_is_negative_on_that_tag_only() -> None:
    m = _model()
    m.learn(_event(1, "u", "l1", FeedbackType.IMPRESSION, tag="red"))
    m.flush()
    assert m.counters.negatives == 1


def test_events_wait_for_their_listing_tags() -> None:
    m = _model()
    assert m.learn(_event(1, "u", "l9", FeedbackType.PURCHASE)) == set()
    assert m.counters.positives == 0
    assert m.set_listing_tags("l9", [("lamps", 0.7)]) == {"u"}
    assert m.counters.positives == 1 and "lamps" in m.tags


def test_merchant_judgements_are_ignored() -> None:
    m = _model()
    m.learn(_event(1, "u", "l1", FeedbackType.TAG_REJECT, tag="red"))
    assert m.counters.ignored == 1 and m.counters.positives == 0


def test_serving_reads_do_not_mutate_affinity_model() -> None:
    m = _model()
    for i in range(20):
        m.learn(_event(i, f"u{i % 3}", "l1" if i % 2 else "l2", FeedbackType.PURCHASE, minutes=i))
    before = pickle.dumps(m)
    assert len(m.top_tags("u1", 2)) == 2
    m.top_tags("nobody", 5)
    m.top_users("shoes", 2)
    m.score("u0", "unknown-tag")
    assert pickle.dumps(m) == before


def test_top_tags_rank_what_the_user_engages_with() -> None:
    m = _model()
    for i in range(40):
        m.learn(_event(2 * i, "u", "l1", FeedbackType.PURCHASE, minutes=i))
        m.learn(_event(2 * i + 1, "v", "l2", FeedbackType.PURCHASE, minutes=i))
    assert m.top_tags("v", 1)[0][0] == "pots"
    assert {t for t, _ in m.top_tags("u", 2)} == {"shoes", "red"}
    assert m.top_users("pots", 1)[0][0] == "v"


def test_model_pickles_with_its_stream_state() -> None:
    m = _model()
    m.learn(_event(1, "u", "l1", FeedbackType.IMPRESSION))
    m.learn(_event(2, "u", "l9", FeedbackType.CLICK))
    restored = pickle.loads(pickle.dumps(m))
    assert restored.stats() == m.stats()
    assert restored.learn(_event(2, "u", "l9", FeedbackType.CLICK)) == set()  # dedup survives
    clone = copy.deepcopy(m)
    clone.flush()
    assert m.counters.negatives == 0


def test_repeated_impressions_of_a_pair_are_each_a_negative() -> None:
    m = _model()
    m.learn(_event(1, "u", "l2", FeedbackType.IMPRESSION, minutes=0))
    m.learn(_event(2, "u", "l2", FeedbackType.IMPRESSION, minutes=1))
    m.flush()
    assert m.counters.negatives == 2


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_proba_many_matches_predict_proba_one(params: dict[str, Any]) -> None:
    clf = _trained(params)
    pairs = [("alice", "shoes"), ("bob", "shoes"), ("carol", "pots"), ("alice", "unseen"), ("x", "y")]
    users, tags = zip(*pairs, strict=True)
    expected = [clf.predict_proba_one({"user": u, "tag": t})[True] for u, t in pairs]
    assert clf.proba_many(list(users), list(tags)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("params", CLASSIFIERS, ids=str)
def test_learn_user_tags_equals_learn_one_per_tag(params: dict[str, Any]) -> None:
    a, b = UserTagClassifier(seed=3, **params), UserTagClassifier(seed=3, **params)
    for i in range(20):
        tags = ["shoes", "red"] if i % 2 else ["pots"]
        a.learn_user_tags(f"u{i % 3}", tags, i % 4 != 0, 2.0)
        for tag in tags:
            b.learn_one({"user": f"u{i % 3}", "tag": tag}, i % 4 != 0, w=2.0)
    for u in ("u0", "u1", "u9"):
        for t in ("shoes", "pots", "x"):
            x = {"user": u, "tag": t}
            assert a.predict_proba_one(x)[True] == pytest.approx(b.predict_proba_one(x)[True], abs=1e-12)
