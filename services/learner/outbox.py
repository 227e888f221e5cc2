"""The learner's dead letters, tracked until the broker has them.

A checkpoint stores offsets past every record the learner has consumed, including the
ones it dead-lettered. So a checkpoint may only be taken once every dead letter produced
so far is delivered: otherwise a crash after it would lose the letter for good (the
original is never read again). :meth:`DeadLetterOutbox.settle` says when that holds.
A failed delivery is produced again (after a backoff; without the original bytes if
the broker found the letter too large) and, until it is delivered, checkpoints wait
and the learner's health says degraded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.learner.health import LearnerHealth
from services.learner.writer import Backoff
from shared.dead_letters import publish_dead_letter, without_original
from shared.events import DeadLetter

log = logging.getLogger("tagloop.learner")

_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}


class DeadLetterOutbox:
    """Dead letters produced by the loop (its thread alone: callbacks run in its ``poll``/``flush``)."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        health: LearnerHealth,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer, self.topic, self.health = producer, topic, health
        self.backoff, self.clock = backoff, clock
        self.pending = 0  # produced, delivery not reported yet
        self.failed: list[tuple[DeadLetter, KafkaError | KafkaException | BufferError]] = []
        self.retries = 0  # rounds of re-publishing since everything was last delivered
        self._retry_at = 0.0

    def publish(self, letter: DeadLetter) -> None:
        """Produce ``letter``; its delivery (or failure) is reported to :meth:`settle`."""

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self.pending -= 1
            if err is None:
                self.health.dead_letters.inc()
            else:
                self._failed(letter, err)

        self.pending += 1
        try:
            publish_dead_letter(self.producer, self.topic, letter, on_delivery=delivered)
        except (KafkaException, BufferError) as exc:  # refused locally even without the original
            self.pending -= 1
            self._failed(letter, exc)

    def settle(self, timeout_s: float) -> bool:
        """True when every dead letter produced so far is delivered, so a checkpoint may be taken.

        Flushes the producer (at most ``timeout_s``) and, once their backoff is over,
        produces the failed letters again.
        """
        if self.failed and self.clock() >= self._retry_at:
            again, self.failed = self.failed, []
            self.retries += 1
            log.info("dead letters: producing %d undelivered letters again (round %d)", len(again), self.retries)
            for letter, error in again:
                self.publish(_smaller(letter, error))
            self._retry_at = self.clock() + self.backoff.delay(self.retries)
        self.producer.flush(timeout_s)
        if self.failed:
            error = self.failed[-1][1]
            self.health.dead_letters_held(
                f"{len(self.failed)} dead letters not delivered ({_text(error)}); "
                f"checkpoints held back until they are (retry round {self.retries})"
            )
            return False
        if self.pending:
            self.health.dead_letters_held(f"{self.pending} dead letters not yet delivered; checkpoints wait")
            return False
        self.retries, self._retry_at = 0, 0.0
        self.health.dead_letters_held(None)
        return True

    def _failed(self, letter: DeadLetter, error: KafkaError | KafkaException | BufferError) -> None:
        self.health.dead_letter_failures.inc()
        log.warning("dead letter for %s[%d]@%d not delivered: %s", letter.topic, letter.partition, letter.offset,
                    _text(error))
        self.failed.append((letter, error))


def _smaller(letter: DeadLetter, error: KafkaError | KafkaException | BufferError) -> DeadLetter:
    """The letter to produce again: without the original when the broker found it too large."""
    code = error.code() if isinstance(error, KafkaError) else None
    return without_original(letter, _text(error)) if code in _TOO_LARGE else letter


def _text(error: KafkaError | KafkaException | BufferError) -> str:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        error = error.args[0]
    if isinstance(error, KafkaError):
        return str(error.str())
    return str(error) or type(error).__name__
