"""The learner process: feedback in, model checkpoints and user-affinity records out.

``python -m services.learner.main`` (or ``tagloop learner run``) reads top to bottom:
restore the latest checkpoint → assign partitions at its offsets → loop
{poll → decode → learn → dead-letter → checkpoint → publish → commit} → final
checkpoint on SIGTERM/SIGINT. A kill -9 loses only what was learned since the last
checkpoint, and that is re-read from the checkpoint's offsets on restart.

Postgres trouble never stops the loop: a failed checkpoint write is retried with
backoff (:mod:`services.learner.writer`) while the learner keeps learning and serving,
and its health says degraded. A checkpoint is never taken while a dead letter is
undelivered (:mod:`services.learner.outbox`): its offsets would skip the original.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message, Producer

from services.learner.checkpoint import Checkpoint, PostgresCheckpoints, can_fork
from services.learner.consumer import FeedbackSource, apply
from services.learner.health import LearnerHealth
from services.learner.model import AffinityModel, UserTagClassifier
from services.learner.outbox import DeadLetterOutbox
from services.learner.publisher import AffinityPublisher, RateLimiter
from services.learner.settings import LearnerSettings
from services.learner.writer import CheckpointError, CheckpointWriter
from shared.dead_letters import dead_letter_for
from shared.kafka import producer_config
from shared.log_setup import configure_logging
from shared.settings import Settings

log = logging.getLogger("tagloop.learner")
SERVICE = "learner"
# Before a checkpoint, dead letters (and affinity records) get this long to be delivered;
# if they are not, the loop goes on learning and tries again on its next turn.
DELIVERY_WAIT_S = 5.0
# At stop, the final checkpoint is retried this long (within a usual 30 s SIGTERM grace).
FINAL_CHECKPOINT_TIMEOUT_S = 20.0


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
    health: LearnerHealth | None = None,
) -> Checkpoint:
    """Run the learner until ``stop`` is set; returns the final checkpoint (already saved).

    Raises
    ------
    CheckpointError
        When the final checkpoint cannot be written (Postgres refusing writes, dead letters
        undelivered) within ``FINAL_CHECKPOINT_TIMEOUT_S``; a restart resumes from the last one.
    """
    shared = shared or ModelLock()
    health = health or LearnerHealth()
    repo = PostgresCheckpoints(settings.database_url, ls.name, keep=ls.checkpoints_kept)
    repo.migrate()
    restored = repo.latest()
    model = restored.model if restored else new_model(ls)
    log.info("start from checkpoint %s: %s", restored.id if restored else None, model.stats())
    source = FeedbackSource(settings, f"tagloop-learner-{ls.name}", restored.offsets if restored else {})
    producer = Producer(producer_config(settings.kafka))
    outbox = DeadLetterOutbox(producer, settings.topics.dead_letter, health)
    publisher = AffinityPublisher(
        producer,
        settings.topics.user_affinity,
        ls.top_k,
        RateLimiter(ls.publish_max_per_s, ls.publish_min_interval_s),
    )
    with shared.lock:
        shared.model = model
    # One checkpoint in flight at most, snapshot in the loop, written in the background.
    writer = CheckpointWriter(repo, health, forked=ls.fork_checkpoints and can_fork(), on_checkpoint=on_checkpoint)

    def take_checkpoint() -> None:
        with shared.lock:
            writer.start(model, source.snapshot())

    since_checkpoint, last_checkpoint = 0, time.monotonic()
    try:
        while not stop.is_set():
            msgs = source.poll(ls.poll_batch, timeout_s=0.2)
            with shared.lock:
                applied = apply(model, msgs, settings.topics.tags)
            for msg, error in applied.rejected:
                outbox.publish(dead_letter_for(msg, error, SERVICE, settings.kafka.max_record_bytes))
            for msg in msgs:
                source.advance(msg)
            health.records.inc(len(msgs))
            health.learned([m.timestamp()[1] for m in msgs if m.timestamp()[1] > 0])  # the learner lag metric
            if on_batch is not None:
                on_batch(msgs)
            since_checkpoint += len(msgs)
            publisher.mark(applied.touched_users)
            written = writer.collect()
            if written is not None:
                source.commit(written.offsets)
            due = writer.retry_due() or since_checkpoint >= ls.checkpoint_every or (
                since_checkpoint and time.monotonic() - last_checkpoint >= ls.checkpoint_interval_s
            )
            # While the previous checkpoint is still being written (or a failed one's backoff
            # runs), keep learning; and never checkpoint past an undelivered dead letter.
            if due and writer.can_start() and outbox.settle(DELIVERY_WAIT_S):
                take_checkpoint()
                since_checkpoint, last_checkpoint = 0, time.monotonic()
            with shared.lock:
                publisher.publish_due(model)
        final = final_checkpoint(writer, outbox, take_checkpoint, FINAL_CHECKPOINT_TIMEOUT_S)
        source.commit(final.offsets)
        return final
    finally:
        writer.close()
        source.close()
        producer.flush(10)


def final_checkpoint(
    writer: CheckpointWriter, outbox: DeadLetterOutbox, take: Callable[[], None], timeout_s: float
) -> Checkpoint:
    """The last checkpoint at stop: dead letters delivered, then written, retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    writer.wait()
    while True:
        if outbox.settle(min(DELIVERY_WAIT_S, max(0.0, deadline - time.monotonic()))):
            take()
            done = writer.wait()
            if done is not None:
                return done
        if time.monotonic() >= deadline:
            _, reasons = writer.health.status()
            raise CheckpointError(f"final checkpoint not written: {'; '.join(reasons) or 'unknown reason'}")
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def main() -> None:
    """Entry point of ``python -m services.learner.main``: run until SIGTERM/SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = Settings()
    configure_logging(settings)
    final = run(settings, settings.learner, stop,
                on_checkpoint=lambda cp_id, stats: log.info("checkpoint %s %s", cp_id, stats))
    log.info("stopped at checkpoint %s", final.id)


if __name__ == "__main__":
    main()
