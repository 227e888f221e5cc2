"""Run the feedback worker: ``python -m services.feedback.main [--engine batch|faust] [--group G]``.

Settings come from the environment (``TAGLOOP_*``) or the local stack file; the
schema is migrated first, so a fresh database works out of the box.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from faust import Worker

from services.feedback.app import DEFAULT_GROUP, FeedbackConfig, build_app, migrate
from services.feedback.batch import run_batch_consumer
from shared.settings import Settings


def run_worker(settings: Settings, config: FeedbackConfig, loglevel: str = "info", engine: str = "batch") -> None:
    """Migrate, then run the worker in this process until SIGTERM/SIGINT.

    ``engine="batch"`` (default, the fastest while exact: ``bench/results/feedback.md``): the service
    on aiokafka batch fetches (:mod:`services.feedback.batch`); ``"faust"``: the same service in the
    faust app (:func:`build_app`), same write path.
    """
    applied = migrate(settings)
    logging.getLogger(__name__).info("feedback: migrations applied now: %s", applied or "none")
    if engine == "batch":
        logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
        asyncio.run(_run_batch(settings, config))
        return
    app = build_app(settings, config)
    # Worker installs signal handlers: SIGTERM/SIGINT stop it gracefully (final offset commit).
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


async def _run_batch(settings: Settings, config: FeedbackConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_batch_consumer(settings, config, stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tagloop feedback worker")
    parser.add_argument("--group", default=DEFAULT_GROUP)
    parser.add_argument("--batch-size", type=int, default=FeedbackConfig.batch_size)
    parser.add_argument("--within", type=float, default=FeedbackConfig.within_s)
    parser.add_argument("--web", action="store_true", help="run faust's web server on a free port")
    parser.add_argument("--loglevel", default="info")
    parser.add_argument("--engine", choices=["faust", "batch"], default="batch")
    parser.add_argument("--writers", type=int, default=1, help="batch engine: concurrent transactions per poll")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics on 127.0.0.1:PORT")
    parser.add_argument("--stats-file", default=None, help="write stage timings here as JSON (benchmark)")
    parser.add_argument(
        "--counters", choices=["rollup", "inline"], default=FeedbackConfig.counters,
        help="rollup: counters rolled up from the archive (lag measured); inline: in each batch's transaction",
    )
    parser.add_argument("--rollup-interval", type=float, default=FeedbackConfig.rollup_interval_s,
                        help="seconds between rollup steps while nothing is queued")
    args = parser.parse_args(argv)
    config = FeedbackConfig(
        group=args.group,
        batch_size=args.batch_size,
        within_s=args.within,
        web=args.web,
        stats_file=args.stats_file,
        metrics_port=args.metrics_port,
        writers=args.writers,
        counters=args.counters,
        rollup_interval_s=args.rollup_interval,
    )
    run_worker(Settings(), config, args.loglevel, args.engine)


if __name__ == "__main__":
    main()
