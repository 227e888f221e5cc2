"""Publishes each user's changed top-k tags to the compacted ``user-affinity`` topic, rate-limited.

The learner marks users whose affinities it just changed; :meth:`AffinityPublisher.publish_due`
sends those whose top-k actually moved, at most once per user per ``min_interval_s``
and at most ``max_per_s`` records per second overall (a token bucket), so a hot
stream cannot flood the topic. Records are keyed by user so compaction keeps the latest.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from services.learner.model import AffinityModel
from shared.events import UserAffinity, encode

SCORE_DECIMALS = 4


class _Producer(Protocol):
    def produce(self, topic: str, value: bytes | None = ..., key: bytes | None = ...) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...


class RateLimiter:
    """A token bucket over all keys plus a minimum interval per key (pure: the clock is injected)."""

    def __init__(self, max_per_s: float, min_interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_per_s = max_per_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._tokens = max_per_s
        self._refilled = clock()
        self._last: dict[str, float] = {}

    def key_ready(self, key: str) -> bool:
        last = self._last.get(key)
        return last is None or self.clock() - last >= self.min_interval_s

    def take(self, key: str) -> bool:
        """Consume one token for ``key`` if both limits allow it now."""
        now = self.clock()
        self._tokens = min(self.max_per_s, self._tokens + (now - self._refilled) * self.max_per_s)
        self._refilled = now
        if self._tokens < 1.0 or not self.key_ready(key):
            return False
        self._tokens -= 1.0
        self._last[key] = now
        return True


class AffinityPublisher:
    """Sends users' changed top-k to ``topic`` within the limits of a :class:`RateLimiter`."""

    def __init__(self, producer: _Producer, topic: str, top_k: int, limiter: RateLimiter):
        self.producer = producer
        self.topic = topic
        self.top_k = top_k
        self.limiter = limiter
        self._dirty: OrderedDict[str, None] = OrderedDict()
        self._sent: dict[str, list[tuple[str, float]]] = {}
        self.published = 0

    def mark(self, users: Iterable[str]) -> None:
        for user in users:
            self._dirty[user] = None

    @property
    def backlog(self) -> int:
        return len(self._dirty)

    def publish_due(self, model: AffinityModel, max_users: int = 200) -> int:
        """Publish dirty users whose turn has come; returns how many records were produced.

        Each top-k computed takes a token (computing it costs the learner as much as
        sending it), so the limiter bounds the CPU taken from learning too.
        """
        sent = 0
        for user in list(itertools.islice(self._dirty, max_users)):
            if not self.limiter.key_ready(user):
                self._dirty.move_to_end(user)  # not yet: let the others have their turn
                continue
            if not self.limiter.take(user):
                break  # out of tokens: the rest stay dirty for a later call
            del self._dirty[user]
            top = [(t, round(s, SCORE_DECIMALS)) for t, s in model.top_tags(user, self.top_k)]
            if top == self._sent.get(user):
                continue
            record = UserAffinity(
                user_id=user, top_tags=top, model_name=model.name, events_seen=model.counters.events_seen
            )
            self.producer.produce(self.topic, key=user.encode(), value=encode(record))
            self._sent[user] = top
            sent += 1
        self.producer.poll(0)
        self.published += sent
        return sent
