"""The learner process: feedback in, model checkpoints and user-affinity records out.

``python -m services.learner.main`` (or ``tagloop learner run``) reads top to bottom:
restore the latest checkpoint → assign partitions at its offsets → loop
{poll → decode → learn → dead-letter → checkpoint → publish → commit} → final
checkpoint on SIGTERM/SIGINT. A kill -9 loses only what was learned since the last
checkpoint, and that is re-read from the checkpoint's offsets on restart.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from confluent_kafka import Message, Producer

from services.learner.checkpoint import Checkpoint, PostgresCheckpoints, can_fork, dumps, save_forked
from services.learner.consumer import FeedbackSource, apply
from services.learner.model import AffinityModel, UserTagClassifier
from services.learner.publisher import AffinityPublisher, RateLimiter
from services.learner.settings import LearnerSettings
from shared.kafka import dead_letter_for, producer_config, publish_dead_letter
from shared.settings import Settings

log = logging.getLogger("tagloop.learner")
SERVICE = "learner"


def new_model(ls: LearnerSettings) -> AffinityModel:
    return AffinityModel(
        classifier=UserTagClassifier(kind=ls.model, learning_rate=ls.learning_rate, adagrad=ls.adagrad),
        impression_window_s=ls.impression_window_s,
        dedup_window=ls.dedup_window,
    )


class ModelLock:
    """The live model behind a lock: the loop writes under it, the in-process API reads under it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.model: AffinityModel | None = None


def run(
    settings: Settings,
    ls: LearnerSettings,
    stop: threading.Event,
    shared: ModelLock | None = None,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
    on_batch: Callable[[list[Message]], None] | None = None,
) -> Checkpoint:
    """Run the learner until ``stop`` is set; returns the final checkpoint (already saved)."""
    shared = shared or ModelLock()
    repo = PostgresCheckpoints(settings.database_url, ls.name, keep=ls.checkpoints_kept)
    repo.migrate()
    restored = repo.latest()
    model = restored.model if restored else new_model(ls)
    log.info("start from checkpoint %s: %s", restored.id if restored else None, model.stats())
    source = FeedbackSource(settings, f"tagloop-learner-{ls.name}", restored.offsets if restored else {})
    producer = Producer(producer_config(settings.kafka))
    publisher = AffinityPublisher(
        producer,
        settings.topics.user_affinity,
        ls.top_k,
        RateLimiter(ls.publish_max_per_s, ls.publish_min_interval_s),
    )
    with shared.lock:
        shared.model = model
    # One checkpoint in flight at most. Its snapshot is taken in the loop (a fork, or a
    # pickle where fork is unavailable); Postgres is written by a child or a thread, so
    # learning does not wait for the pickling or the database.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
    in_flight: Future[Checkpoint] | None = None
    forked = ls.fork_checkpoints and can_fork()

    def checkpoint() -> Future[Checkpoint]:
        nonlocal in_flight
        # Dead letters must be durable before the offsets that skip their originals are.
        producer.flush(30)
        if in_flight is not None:
            in_flight.result()  # surfaces a failed write instead of silently skipping it
        with shared.lock:
            offsets, stats = source.snapshot(), model.stats()
            if forked:
                wait_child = save_forked(repo, model, offsets)
            else:
                blob = dumps(model)

        def write() -> Checkpoint:
            if forked:
                cp_id = wait_child()
            else:
                cp_id, _ = repo.save_serialized(blob, offsets, model.name, int(stats["events_seen"]), stats)
            if on_checkpoint is not None:
                on_checkpoint(cp_id, stats)
            return Checkpoint(model=model, offsets=offsets, id=cp_id)

        in_flight = writer.submit(write)
        return in_flight

    since_checkpoint, last_checkpoint = 0, time.monotonic()
    to_commit: Future[Checkpoint] | None = None
    try:
        while not stop.is_set():
            msgs = source.poll(ls.poll_batch, timeout_s=0.2)
            with shared.lock:
                applied = apply(model, msgs, settings.topics.tags)
            for msg, error in applied.rejected:
                publish_dead_letter(producer, settings.topics.dead_letter, dead_letter_for(msg, error, SERVICE))
            for msg in msgs:
                source.advance(msg)
            if on_batch is not None:
                on_batch(msgs)
            since_checkpoint += len(msgs)
            publisher.mark(applied.touched_users)
            due = since_checkpoint >= ls.checkpoint_every or (
                since_checkpoint and time.monotonic() - last_checkpoint >= ls.checkpoint_interval_s
            )
            # While the previous checkpoint is still being written, keep learning and take the
            # next one when it is done: waiting for it here stalled the loop for seconds.
            if due and (in_flight is None or in_flight.done()):
                to_commit = checkpoint()
                since_checkpoint, last_checkpoint = 0, time.monotonic()
            with shared.lock:
                publisher.publish_due(model)
            if to_commit is not None and to_commit.done():
                source.commit(to_commit.result().offsets)
                to_commit = None
        final = checkpoint().result()
        source.commit(final.offsets)
        return final
    finally:
        writer.shutdown(wait=True)
        source.close()
        producer.flush(10)


def main() -> None:
    """Entry point of ``python -m services.learner.main``: run until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = Settings()
    final = run(settings, settings.learner, stop,
                on_checkpoint=lambda cp_id, stats: log.info("checkpoint %s %s", cp_id, stats))
    log.info("stopped at checkpoint %s", final.id)


if __name__ == "__main__":
    main()
