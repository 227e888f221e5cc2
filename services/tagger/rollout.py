"""Which model version tags which listing: the champion, and during a rollout a candidate.

A :class:`Rollout` wraps the champion's backend and, while one is being rolled out, a
candidate's, and stamps every item with the version that actually tagged it (one batch can
be tagged by two versions):

* ``canary``: a fixed share of listings, chosen by a keyed hash of the listing id
  (:func:`shared.canary.routes_to_candidate`, salted with the candidate's version), is
  tagged by the candidate; the same listing gets the same arm in every tagger process.
* ``shadow``: both versions tag everything; only the champion's tags are published, the
  candidate's go aside (``shadow``) for comparison.

A failing candidate never fails a listing: its items fall back to the champion (counted,
so the canary's error rate can roll it back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.tagger.inference import ModelStamp, TagBackend
from shared.canary import routes_to_candidate
from shared.events import Tag

log = logging.getLogger(__name__)

Mode = Literal["none", "shadow", "canary"]


@dataclass(frozen=True)
class Routed:
    """Tags of one listing and the model version that produced them."""

    tags: list[Tag]
    stamp: ModelStamp


@dataclass(frozen=True)
class ShadowResult:
    index: int  # position in the batch
    tags: list[Tag]
    stamp: ModelStamp


@dataclass
class ArmCounters:
    """Per-version requests, errors and latency seen by this tagger (the canary's health)."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def observe(self, seconds: float, failed: bool = False) -> None:
        self.requests += 1
        self.errors += int(failed)
        self.latencies.append(seconds)
        del self.latencies[:-1000]  # the last 1,000 requests are enough for a p99


@dataclass(frozen=True)
class RolloutPlan:
    """What the registry says should serve: the champion, and a candidate in shadow or canary."""

    champion: int | None
    candidate: int | None = None
    mode: Mode = "none"
    share: float = 0.0

    @property
    def salt(self) -> str:
        return f"canary-v{self.candidate}"


class Rollout:
    """The backends one tagger tags with now."""

    def __init__(
        self, champion: TagBackend, candidate: TagBackend | None = None, mode: Mode = "none",
        share: float = 0.0, salt: str = "canary",
    ) -> None:
        self.champion, self.candidate = champion, candidate
        self.mode: Mode = mode if candidate is not None else "none"
        self.share, self.salt = share, salt
        self.arms: dict[str, ArmCounters] = {}

    @property
    def stamp(self) -> ModelStamp:
        return self.champion.stamp

    @property
    def fingerprint(self) -> str:
        """Part of the re-tag memory: a listing tagged under another rollout is tagged again when it changes."""
        cand = self.candidate.stamp.version if self.candidate is not None else "-"
        return f"{self.champion.stamp.version}|{self.mode}|{cand}|{self.share:g}"

    def arm_of(self, listing_id: str) -> ModelStamp:
        """The version that tags ``listing_id`` under this rollout (deterministic)."""
        candidate = self.candidate
        if self.mode == "canary" and candidate is not None and routes_to_candidate(listing_id, self.share, self.salt):
            return candidate.stamp
        return self.champion.stamp

    async def tag(self, texts: Sequence[str], listing_ids: Sequence[str]) -> tuple[list[Routed], list[ShadowResult]]:
        """Tags of every text, each stamped with its version; plus the shadow's tags in shadow mode."""
        if self.candidate is None or self.mode == "none":
            return [Routed(t, self.champion.stamp) for t in await self._timed(self.champion, texts, listing_ids)], []
        if self.mode == "shadow":
            main, shadow = await asyncio.gather(
                self._timed(self.champion, texts, listing_ids), self._guarded(self.candidate, texts, listing_ids),
            )
            routed = [Routed(t, self.champion.stamp) for t in main]
            side = [] if shadow is None else [ShadowResult(i, t, self.candidate.stamp) for i, t in enumerate(shadow)]
            return routed, side
        to_candidate = [i for i, lid in enumerate(listing_ids) if routes_to_candidate(lid, self.share, self.salt)]
        picked = set(to_candidate)
        rest = [i for i in range(len(texts)) if i not in picked]
        # A micro-batch may route every listing to one arm: the other is not called at all.
        cand_out, champ_out = await asyncio.gather(
            self._guarded(self.candidate, [texts[i] for i in to_candidate], [listing_ids[i] for i in to_candidate])
            if to_candidate else _none(),
            self._timed(self.champion, [texts[i] for i in rest], [listing_ids[i] for i in rest])
            if rest else _nothing(),
        )
        out: list[Routed | None] = [None] * len(texts)
        for i, tags in zip(rest, champ_out, strict=True):
            out[i] = Routed(tags, self.champion.stamp)
        if to_candidate:
            if cand_out is None:  # the candidate failed: its listings are tagged by the champion
                fallback = await self._timed(self.champion, [texts[i] for i in to_candidate],
                                             [listing_ids[i] for i in to_candidate])
                for i, tags in zip(to_candidate, fallback, strict=True):
                    out[i] = Routed(tags, self.champion.stamp)
            else:
                for i, tags in zip(to_candidate, cand_out, strict=True):
                    out[i] = Routed(tags, self.candidate.stamp)
        return [r for r in out if r is not None], []

    async def _timed(self, backend: TagBackend, texts: Sequence[str], listing_ids: Sequence[str]) -> list[list[Tag]]:
        started = time.perf_counter()
        arm = self.arms.setdefault(backend.stamp.version, ArmCounters())
        try:
            result = await backend.tag(texts, listing_ids)
        except Exception:
            arm.observe(time.perf_counter() - started, failed=True)
            raise
        arm.observe(time.perf_counter() - started)
        return result

    async def _guarded(
        self, backend: TagBackend, texts: Sequence[str], listing_ids: Sequence[str]
    ) -> list[list[Tag]] | None:
        """The candidate's tags, or None when it failed (never the listing's failure)."""
        try:
            return await self._timed(backend, texts, listing_ids)
        except Exception as exc:
            log.warning("candidate %s failed (%s); its listings go to the champion", backend.stamp.version, exc)
            return None

    async def ready(self) -> bool:
        return await self.champion.ready()

    async def close(self) -> None:
        await self.champion.close()
        if self.candidate is not None:
            await self.candidate.close()


async def _none() -> None:
    return None


async def _nothing() -> list[list[Tag]]:
    return []
