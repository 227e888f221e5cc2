"""Model versions per listing on the real broker and Triton: canary routing, shadow, swaps under load.

The candidate here is a second real backend over the same Triton encoder with a stamp of
its own: what is tested is the routing, the per-item stamps and the swaps, not a model.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from services.feedback.cli import all_migrations
from services.simulator.listings import produce_listings
from services.tagger.inference import ModelStamp, TritonZeroShotBackend
from services.tagger.pipeline import TaggerOptions, TaggerPipeline
from services.tagger.rollout import Rollout
from services.tagger.rollout_watch import report_sample
from shared.canary import routes_to_candidate
from shared.db import apply_migrations
from shared.events import TagEvent
from shared.settings import Settings
from shared.triton_client import AsyncTritonTextClient
from tests.integration.test_tagger_faults import TopicTail, real_listings, tag_events

pytestmark = pytest.mark.integration


async def zero_shot(settings: Settings, version: str, model: str | None = None) -> TritonZeroShotBackend:
    base = await TritonZeroShotBackend.create(settings)
    client = AsyncTritonTextClient(settings.triton.grpc_url, model or settings.triton.encoder_model,
                                   settings.triton.timeout_s)
    return TritonZeroShotBackend(client, base.tagger, ModelStamp(base.stamp.name, version))


class Running:
    """A real pipeline on its own loop thread, whose rollout the test can swap mid-stream."""

    def __init__(self, settings: Settings, make_rollout) -> None:  # type: ignore[no-untyped-def]
        self.loop = asyncio.new_event_loop()
        self.settings = settings
        self.stop = asyncio.Event()
        self.rollout: Rollout = self.loop.run_until_complete(make_rollout())
        group = f"rollout-{uuid.uuid4().hex[:6]}"
        self.pipeline = TaggerPipeline(settings, self.rollout, TaggerOptions(group_id=group, batch_size=8))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.pipeline.run(self.stop))
        except BaseException as exc:
            self.error = exc

    def swap(self, make_rollout) -> Rollout:  # type: ignore[no-untyped-def]
        async def go() -> Rollout:
            return self.pipeline.swap(await make_rollout())

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(120)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(120)
        if self.error is not None:
            raise self.error


def by_listing(events: list[TagEvent]) -> dict[str, list[TagEvent]]:
    out: dict[str, list[TagEvent]] = {}
    for e in events:
        out.setdefault(e.listing_id, []).append(e)
    return out


@pytest.mark.timeout(600)
def test_canary_routes_by_listing_and_stamps_each_event(stack_settings: Settings, data_dir: Path) -> None:
    s = stack_settings
    listings = real_listings(data_dir, 60, offset=5000)
    share, salt = 0.3, "canary-v2"

    async def canary() -> Rollout:
        return Rollout(await zero_shot(s, "champion"), await zero_shot(s, "candidate"), "canary", share, salt)

    tags = TopicTail(s, s.topics.tags)
    try:
        with Running(s, canary) as run:
            produce_listings(s, listings)
            events = tag_events(tags.wait(lambda ms: len(ms) >= 60, 300, "60 tag events"))
            events = tag_events(tags.settle(2.0))
            sample = run.pipeline.listing_sample
            seen, sampled = sample.seen, sample.drain()
    finally:
        tags.close()
    want = {x.listing_id: "candidate" if routes_to_candidate(x.listing_id, share, salt) else "champion"
            for x in listings}
    assert {e.listing_id: e.model_version for e in events} == want
    assert len(events) == 60 and set(want.values()) == {"candidate", "champion"}  # both arms in mixed batches
    # What the tagger sampled for the trainer's drift windows: tagged listings, reported to Postgres.
    assert seen == 60 and len(sampled) == s.tagger.listing_sample_size
    apply_migrations(s.database_url, all_migrations())
    me = f"test-{uuid.uuid4().hex[:6]}"
    report_sample(s, sampled, me)
    with psycopg.connect(s.database_url) as conn:
        rows = conn.execute("SELECT listing_id FROM tagger_listing_samples WHERE tagger_id = %s", (me,)).fetchall()
    assert [r[0] for r in rows] == [lid for lid, _ in sampled] and rows[0][0] in want


@pytest.mark.timeout(600)
def test_shadow_publishes_only_the_champion_and_a_failing_canary_fails_nothing(
    stack_settings: Settings, data_dir: Path
) -> None:
    s = stack_settings
    first, second = real_listings(data_dir, 30, offset=5100), real_listings(data_dir, 30, offset=5200)

    async def shadow() -> Rollout:
        return Rollout(await zero_shot(s, "champion"), await zero_shot(s, "shadow-v"), "shadow")

    async def broken_canary() -> Rollout:  # the candidate's model is not served: every call fails
        return Rollout(await zero_shot(s, "champion"), await zero_shot(s, "broken", model="no_such_model"),
                       "canary", 1.0, "x")

    tags, shadows = TopicTail(s, s.topics.tags), TopicTail(s, s.topics.shadow_tags)
    dead = TopicTail(s, s.topics.dead_letter)
    try:
        with Running(s, shadow) as run:
            produce_listings(s, first)
            tags.wait(lambda ms: len(ms) >= 30, 300, "30 tag events")
            shadows.wait(lambda ms: len(ms) >= 30, 60, "30 shadow events")
            run.swap(broken_canary)
            produce_listings(s, second)
            tags.wait(lambda ms: len(ms) >= 60, 300, "60 tag events")
            published, side, letters = tag_events(tags.settle(2.0)), tag_events(shadows.settle(1.0)), dead.settle(1.0)
            arms = run.pipeline.rollout.arms
    finally:
        tags.close()
        shadows.close()
        dead.close()
    assert Counter(e.model_version for e in published) == {"champion": 60}
    assert sorted(e.listing_id for e in published) == sorted(x.listing_id for x in first + second)
    assert {e.model_version for e in side} == {"shadow-v"}
    assert sorted(e.listing_id for e in side) == sorted(x.listing_id for x in first)
    assert letters == []  # the broken candidate's listings fell back to the champion
    assert arms["broken"].errors == arms["broken"].requests > 0


@pytest.mark.timeout(900)
def test_swaps_and_rollback_under_load_lose_and_fail_nothing(stack_settings: Settings, data_dir: Path) -> None:
    s = stack_settings
    listings = real_listings(data_dir, 240, offset=5300)

    async def champion_only() -> Rollout:
        return Rollout(await zero_shot(s, "champion"))

    async def canary() -> Rollout:
        return Rollout(await zero_shot(s, "champion"), await zero_shot(s, "candidate"), "canary", 0.5, "c")

    tags, dead = TopicTail(s, s.topics.tags), TopicTail(s, s.topics.dead_letter)
    try:
        with Running(s, champion_only) as run:
            producer = threading.Thread(target=produce_listings, args=(s, listings, 40.0))
            producer.start()
            tags.wait(lambda ms: len(ms) >= 40, 300, "40 tag events")
            run.swap(canary)  # under load: batches in flight finish on the old rollout
            tags.wait(lambda ms: len(ms) >= 120, 300, "120 tag events")
            run.swap(champion_only)  # rollback
            producer.join()
            tags.wait(lambda ms: len(ms) >= 240, 600, "240 tag events")
            events, letters = tag_events(tags.settle(3.0)), dead.settle(1.0)
    finally:
        tags.close()
        dead.close()
    assert Counter(e.listing_id for e in events) == Counter(x.listing_id for x in listings)  # each once
    assert letters == []
    versions = [e.model_version for e in events]
    assert "candidate" in versions and versions[-1] == "champion"  # the canary served, then the rollback
