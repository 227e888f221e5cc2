"""Keeps a tagger's :class:`~services.tagger.rollout.Rollout` in line with the model registry.

Every ``TAGLOOP_TAGGER__ROLLOUT_REFRESH_S`` seconds the watcher reads the registry: the
champion, and a candidate in ``shadow`` or ``canary``. When that changes it builds the new
backends (the candidate must be served by Triton first) and swaps them in between batches:
batches in flight finish on the versions they started with, so a swap fails no listing.
It also reports what this tagger saw of each version (requests, errors, p99 latency) to
``tagger_arm_stats``, which the trainer's canary controller reads, and a sample of the listings
it tagged to ``tagger_listing_samples`` (the trainer's embedding-drift windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import numpy as np
import psycopg

from services.tagger.inference import AsyncTritonTextClient, TritonTagModelBackend, build_backend
from services.tagger.pipeline import TaggerPipeline
from services.tagger.rollout import Rollout, RolloutPlan
from shared.model_registry import ModelRegistry, ModelStatus
from shared.settings import Settings

log = logging.getLogger(__name__)


def read_plan(settings: Settings) -> RolloutPlan:
    """What the registry says should serve now (blocking: run it in a thread)."""
    registry = ModelRegistry(settings, connect_timeout_s=5.0)
    if not registry.is_migrated():
        return RolloutPlan(champion=None)
    name = settings.triton.tag_model
    champion = registry.champion(name)
    rolling = registry.list_versions(name, [ModelStatus.CANARY, ModelStatus.SHADOW])
    champ = champion.version if champion is not None else None
    if not rolling:
        return RolloutPlan(champion=champ)
    cand = rolling[-1]  # the newest, if ever more than one
    if cand.status == ModelStatus.CANARY:
        share = float(cand.metrics.get("canary_share", settings.trainer.canary_share))
        return RolloutPlan(champ, cand.version, "canary", share)
    return RolloutPlan(champ, cand.version, "shadow", 0.0)


async def build_rollout(settings: Settings, plan: RolloutPlan) -> Rollout:
    """The champion's backend and, when Triton serves it, the candidate's."""
    champion = await build_backend(settings)
    if plan.candidate is None or plan.mode == "none":
        return Rollout(champion)
    probe = AsyncTritonTextClient(settings.triton.grpc_url, settings.triton.tag_model, settings.triton.timeout_s,
                                  model_version=str(plan.candidate))
    try:
        served = await probe.model_ready()
    finally:
        await probe.close()
    if not served:
        log.warning("candidate %s is not served by Triton yet; champion only", plan.candidate)
        return Rollout(champion)
    candidate = await TritonTagModelBackend.create(settings, plan.candidate)
    return Rollout(champion, candidate, plan.mode, plan.share, plan.salt)


def tagger_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def report_arms(settings: Settings, rollout: Rollout, model_name: str, me: str) -> None:
    """Upsert this tagger's per-version counters (blocking)."""
    rows = [
        (me, model_name, version, arm.requests, arm.errors,
         float(np.percentile(arm.latencies, 99)) if arm.latencies else None)
        for version, arm in rollout.arms.items()
    ]
    if not rows:
        return
    with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
        exists = conn.execute("SELECT to_regclass('tagger_arm_stats') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return  # not migrated (`tagloop db migrate`): nobody reads these yet
        conn.cursor().executemany(
            "INSERT INTO tagger_arm_stats (tagger_id, model_name, version, requests, errors, p99_seconds)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tagger_id, model_name, version) DO UPDATE SET"
            " requests = excluded.requests, errors = excluded.errors, p99_seconds = excluded.p99_seconds,"
            " updated_at = now()",
            rows,
        )


def report_sample(settings: Settings, sample: list[tuple[str, str]], me: str) -> None:
    """Append this tagger's listing sample; forget samples older than the retention (blocking)."""
    if not sample:
        return
    with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
        exists = conn.execute("SELECT to_regclass('tagger_listing_samples') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return  # not migrated: nobody reads these yet
        conn.cursor().executemany(
            "INSERT INTO tagger_listing_samples (tagger_id, listing_id, text) VALUES (%s, %s, %s)",
            [(me, listing_id, text) for listing_id, text in sample],
        )
        conn.execute("DELETE FROM tagger_listing_samples WHERE sampled_at < now() - %s * interval '1 hour'",
                     (settings.tagger.listing_sample_retention_h,))


class RolloutWatcher:
    """Swaps the pipeline's rollout when the registry changes; closes retired backends at the end."""

    def __init__(self, settings: Settings, pipeline: TaggerPipeline, plan: RolloutPlan) -> None:
        self.settings, self.pipeline, self.plan = settings, pipeline, plan
        self.retired: list[Rollout] = []
        self.me = tagger_id()

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.tagger.rollout_refresh_s
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                if stop.is_set():
                    break
                await self.refresh()
        finally:
            for old in self.retired:
                with contextlib.suppress(Exception):
                    await old.close()

    async def refresh(self) -> bool:
        """Read the registry once; swap if the plan changed. Returns whether it swapped."""
        try:
            plan = await asyncio.to_thread(read_plan, self.settings)
        except psycopg.Error as exc:  # the registry is out of reach: keep tagging as we are
            log.warning("model registry unreachable, keeping %s: %s", self.pipeline.rollout.fingerprint, exc)
            return False
        try:  # reports feed the canary judgement and drift: a failed one must not stop a swap
            await asyncio.to_thread(
                report_arms, self.settings, self.pipeline.rollout, self.settings.triton.tag_model, self.me
            )
            await asyncio.to_thread(report_sample, self.settings, self.pipeline.listing_sample.drain(), self.me)
        except psycopg.Error as exc:
            log.warning("could not report arm counters or the listing sample: %s", exc)
        if plan == self.plan:
            return False
        try:
            rollout = await build_rollout(self.settings, plan)
        except Exception as exc:  # a version that cannot be built now is retried at the next refresh
            log.warning("cannot switch to %s yet: %s", plan, exc)
            return False
        self.retired.append(self.pipeline.swap(rollout))
        self.plan = plan
        return True
