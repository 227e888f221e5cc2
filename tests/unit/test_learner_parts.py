"""Pure parts of the learner: rate limiting, evaluation metrics and stream, settings."""

from __future__ import annotations

import math

import pytest

from services.learner.evaluate import Purchase, feedback_stream, leaf_tags, ndcg_at_k, recall_at_k, split_by_time
from services.learner.publisher import RateLimiter
from services.learner.settings import LearnerSettings
from shared.events import FeedbackType
from shared.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_bounds_total_rate_and_per_key_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(max_per_s=2, min_interval_s=10, clock=clock)
    assert limiter.take("a") and limiter.take("b")
    assert not limiter.take("c")  # bucket empty
    clock.now = 0.5
    assert limiter.take("c")  # one token refilled
    clock.now = 5
    assert not limiter.take("a")  # a's interval not over
    assert limiter.key_ready("d") and limiter.take("d")
    clock.now = 10
    assert limiter.take("a")


def test_metrics() -> None:
    assert recall_at_k(["a", "b", "c"], {"a", "c", "z", "y"}, k=2) == 0.25
    assert recall_at_k(["a"], set()) == 0.0
    assert ndcg_at_k(["a", "b"], {"a"}) == 1.0
    assert ndcg_at_k(["b", "a"], {"a"}) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["x", "y"], {"a", "b"}) == 0.0


def test_leaf_tags_keep_only_the_most_specific() -> None:
    tags = ["cat:home-garden", "cat:home-garden/kitchen", "cat:home-garden/kitchen/knives", "cat:home", "cat:apparel"]
    assert leaf_tags(tags) == ["cat:home-garden/kitchen/knives", "cat:home", "cat:apparel"]


def _purchases() -> list[Purchase]:
    return [
        Purchase("i1", "c1", "p1", 1, 0.0),
        Purchase("i1", "c1", "p2", 2, 0.0),
        Purchase("i2", "c2", "p3", 1, 50.0),
        Purchase("i3", "c1", "p3", 1, 100.0),
    ]


def test_split_by_time_and_stream() -> None:
    train, test = split_by_time(_purchases(), 0.8)
    assert [p.invoice for p in train] == ["i1", "i1", "i2"] and [p.invoice for p in test] == ["i3"]
    tags: dict[str, tuple[str, ...]] = {"p1": ("a",), "p2": ("b",), "p3": ("c",)}
    events = list(feedback_stream(train, tags, impressions_per_purchase=3, seed=1))
    purchases = [e for e in events if e.type == FeedbackType.PURCHASE]
    assert [(e.user_id, e.listing_id) for e in purchases] == [("c1", "p1"), ("c1", "p2"), ("c2", "p3")]
    assert len({e.event_id for e in events}) == len(events)
    for e in events:
        if e.type == FeedbackType.IMPRESSION:
            # Never an impression of something bought in the same invoice; surfaced by one of its tags.
            assert not (e.user_id == "c1" and e.listing_id in {"p1", "p2"} and e.ts.timestamp() == 0.0)
            assert e.tag_id in tags[e.listing_id]


def test_settings_read_env_and_shared_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGLOOP_API_TOKEN", "shared")
    monkeypatch.setenv("TAGLOOP_LEARNER__CHECKPOINT_EVERY", "123")
    s = Settings().learner
    assert s.api_token.get_secret_value() == "shared" and s.checkpoint_every == 123
    assert "shared" not in repr(s)
    monkeypatch.setenv("TAGLOOP_LEARNER__API_TOKEN", "own")
    assert Settings().learner.api_token.get_secret_value() == "own"
    assert LearnerSettings(api_token="init").api_token.get_secret_value() == "init"
