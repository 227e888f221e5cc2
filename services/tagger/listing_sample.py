"""A uniform sample of the listings a tagger tagged: what the trainer's embedding-drift trigger compares.

The trainer cannot see listing texts (they flow through Kafka, not Postgres), and reading
a time window back from ``listings`` needs offsets-for-times, which the local broker lacks.
So each tagger keeps a small reservoir of what it tagged since its last report and writes
it to ``tagger_listing_samples`` with the arm counters (:mod:`services.tagger.rollout_watch`).

>>> sample = ListingSample(size=2, seed=0)
>>> for i in range(100):
...     sample.offer(f"l{i}", f"text {i}")
>>> sample.seen, len(sample.drain()), len(sample.drain())
(100, 2, 0)
"""

from __future__ import annotations

import random


class ListingSample:
    """Reservoir sampling (Algorithm R): each offered listing is kept with probability size / seen."""

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.kept: list[tuple[str, str]] = []
        self.seen = 0

    def offer(self, listing_id: str, text: str) -> None:
        self.seen += 1
        if len(self.kept) < self.size:
            self.kept.append((listing_id, text))
            return
        j = self.rng.randrange(self.seen)
        if j < self.size:
            self.kept[j] = (listing_id, text)

    def drain(self) -> list[tuple[str, str]]:
        """The sample since the last drain; the next one starts empty."""
        kept, self.kept, self.seen = self.kept, [], 0
        return kept
