"""Entrypoint of one tagger process: ``tagloop tagger run`` or ``python -m services.tagger.main``.

Bootstrap: settings → tag backend (trained model or zero-shot, on Triton) → pipeline
→ health/metrics endpoint → run until SIGTERM/SIGINT, then drain and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import psycopg

from services.tagger.inference import TritonTagModelBackend
from services.tagger.metrics import HealthServer, TaggerMetrics
from services.tagger.pipeline import TaggerOptions, TaggerPipeline
from services.tagger.rollout import Rollout, RolloutPlan
from services.tagger.rollout_watch import RolloutWatcher, build_rollout, read_plan
from shared.log_setup import configure_logging
from shared.settings import Settings

log = logging.getLogger("tagloop.tagger")


async def serve(settings: Settings, options: TaggerOptions, http_port: int | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run one tagger until ``stop`` is set (or a signal arrives)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
            loop.add_signal_handler(sig, stop.set)
    if options.model_version is not None:  # pinned (a backfill): the registry does not move it
        rollout = Rollout(await TritonTagModelBackend.create(settings, options.model_version))
    else:
        plan = await initial_plan(settings)
        rollout = await build_rollout(settings, plan)
    log.info("model %s version %s (%s)", rollout.stamp.name, rollout.stamp.version, rollout.fingerprint)
    metrics = TaggerMetrics()
    pipeline = TaggerPipeline(settings, rollout, options, metrics)
    watch = (asyncio.create_task(RolloutWatcher(settings, pipeline, plan).run(stop))
             if options.model_version is None else None)
    health = None
    if http_port is not None:
        health = HealthServer(metrics, pipeline.ready, settings.ops.host, http_port)
        health.start()
        log.info("metrics on http://%s:%d/metrics", settings.ops.host, health.port)
    try:
        await pipeline.run(stop)
    finally:
        stop.set()
        if watch is not None:
            await watch
        if health:
            health.stop()


async def initial_plan(settings: Settings) -> RolloutPlan:
    """The registry's plan, or the champion alone when the registry cannot be read."""
    try:
        return await asyncio.to_thread(read_plan, settings)
    except psycopg.Error as exc:
        log.warning("model registry unreachable at start (%s); serving the champion alone", exc)
        return RolloutPlan(champion=None)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="tagloop tagger")
    parser.add_argument("--group-id", default="tagloop-tagger")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=50)
    parser.add_argument("--max-inflight", type=int, default=4)
    parser.add_argument("--transactional", action="store_true")
    parser.add_argument("--http-port", type=int, default=None)
    # A backfill: another group reads a replay topic with a pinned version, beside the live taggers.
    parser.add_argument("--listings-topic", default=None, help="read this topic instead of the listings topic")
    parser.add_argument("--model-version", type=int, default=None, help="tag with this version, ignore the registry")
    args = parser.parse_args(argv)
    options = TaggerOptions(
        group_id=args.group_id, batch_size=args.batch_size, max_wait_s=args.max_wait_ms / 1000,
        max_inflight=args.max_inflight, transactional=args.transactional, model_version=args.model_version,
    )
    settings = Settings()
    configure_logging(settings)
    if args.listings_topic:
        settings = settings.model_copy(update={"topics": settings.topics.model_copy(
            update={"listings": args.listings_topic})})
    asyncio.run(serve(settings, options, args.http_port))


if __name__ == "__main__":
    main()
