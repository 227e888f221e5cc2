"""Canary routing in one micro-batch: an arm with no listings of the batch is not asked at all."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.tagger.inference import ModelStamp
from services.tagger.rollout import Rollout
from shared.canary import routes_to_candidate
from shared.events import Tag, TagKind, TagSource


class EmptyRequestsFail:
    """A backend that, like a tagger over a dynamic-width Triton output, cannot answer zero texts."""

    def __init__(self, version: str) -> None:
        self.stamp = ModelStamp("tag_model", version)
        self.calls: list[int] = []

    async def tag(self, texts: Sequence[str], listing_ids: Sequence[str] | None = None) -> list[list[Tag]]:
        self.calls.append(len(texts))
        if not texts:
            raise ValueError("probs has 0 columns")
        return [[Tag(tag_id="cat:x", name="x", kind=TagKind.CATEGORY, score=0.9, source=TagSource.MODEL)]
                for _ in texts]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def test_a_batch_routed_entirely_to_the_canary_is_tagged_by_it() -> None:
    champion, candidate = EmptyRequestsFail("1"), EmptyRequestsFail("2")
    rollout = Rollout(champion, candidate, mode="canary", share=0.5, salt="s")
    ids = [lid for lid in (f"l{i}" for i in range(100)) if routes_to_candidate(lid, 0.5, "s")][:3]
    routed, _ = asyncio.run(rollout.tag(["a", "b", "c"], ids))
    assert [r.stamp.version for r in routed] == ["2", "2", "2"]
    assert champion.calls == [] and candidate.calls == [3]


def test_a_batch_routed_entirely_to_the_champion_is_tagged_by_it() -> None:
    champion, candidate = EmptyRequestsFail("1"), EmptyRequestsFail("2")
    rollout = Rollout(champion, candidate, mode="canary", share=0.5, salt="s")
    ids = [lid for lid in (f"l{i}" for i in range(100)) if not routes_to_candidate(lid, 0.5, "s")][:2]
    routed, _ = asyncio.run(rollout.tag(["a", "b"], ids))
    assert [r.stamp.version for r in routed] == ["1", "1"] and candidate.calls == []
