"""Dead letters: the one builder and publisher every service uses for records it cannot process.

A dead letter carries the original record (value and key), where it came from and why it
failed. It must itself always be publishable, whatever came in: the original is cut to
fit the dead-letter topic's record size (``KafkaSettings.max_record_bytes``), and the
letter says so (``original_truncated``, ``original_size``); topic/partition/offset find
the whole record while the topic retains it.

Examples
--------
>>> letter = make_dead_letter(topic="listings", partition=0, offset=7, key=b"l1", value=b"x" * 5000,
...                           error=ValueError("too long"), service="tagger", max_bytes=2000)
>>> letter.original_truncated, letter.original_size, len(encode(letter)) <= 2000
(True, 5000, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, Message, Producer

from shared.events import DeadLetter, DecodeError, encode

# Room kept for the letter's own fields (reason ≤ 2,000 chars, names, timestamps) and JSON.
_ENVELOPE_BYTES = 8_192
_MAX_KEY_BYTES = 1_024
DEFAULT_MAX_BYTES = 1_000_000


def reason_of(error: BaseException) -> str:
    """One line saying why: the decode error's own reason, else the exception's text, bounded."""
    text = error.reason if isinstance(error, DecodeError) else " ".join(str(error).split())
    return text[:2000] or type(error).__name__


def error_class_of(error: BaseException) -> str:
    return error.error_class if isinstance(error, DecodeError) else type(error).__name__


def make_dead_letter(
    *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    error: BaseException, service: str, max_bytes: int = DEFAULT_MAX_BYTES,
) -> DeadLetter:
    """The dead letter for any consumed record, never larger than ``max_bytes`` once encoded."""
    original = value or b""
    # Bytes travel base64-encoded (4 characters per 3 bytes) inside the JSON letter.
    budget = max(0, (max_bytes - _ENVELOPE_BYTES) * 3 // 4 - _MAX_KEY_BYTES)
    reason = reason_of(error)
    letter = _letter(topic, partition, offset, key, original, budget, error, service, reason)
    # The reason can hold escapes (6 bytes for a control character) that outgrow the envelope:
    # shrink what is left until the letter fits.
    while (size := len(encode(letter))) > max_bytes:
        if letter.original:
            budget = max(0, len(letter.original) - (size - max_bytes) * 3 // 4 - 4)
        else:
            reason = reason[: len(reason) // 2]
        letter = _letter(topic, partition, offset, key, original, budget, error, service, reason)
    return letter


def _letter(
    topic: str, partition: int, offset: int, key: bytes | None, original: bytes, budget: int,
    error: BaseException, service: str, reason: str,
) -> DeadLetter:
    cut_key = key is not None and len(key) > _MAX_KEY_BYTES
    truncated = len(original) > budget or cut_key
    return DeadLetter(
        original=original[:budget],
        original_key=key[:_MAX_KEY_BYTES] if key is not None else None,
        original_size=len(original),
        original_truncated=truncated,
        topic=topic[:_MAX_KEY_BYTES],
        partition=partition,
        offset=offset,
        error_class=error_class_of(error)[:200],
        reason=reason + (" [original cut to fit the dead-letter topic]" if truncated else ""),
        service=service,
    )


def dead_letter_for(msg: Message, error: BaseException, service: str, max_bytes: int = DEFAULT_MAX_BYTES) -> DeadLetter:
    """The dead letter for a consumed confluent-kafka message."""
    return make_dead_letter(
        topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0,
        key=msg.key(), value=msg.value(), error=error, service=service, max_bytes=max_bytes,
    )


def without_original(letter: DeadLetter, why: str) -> DeadLetter:
    """The last resort when even a cut letter cannot be produced: where it was and why, no bytes."""
    return letter.model_copy(update={
        "original": b"", "original_key": None, "original_truncated": True,
        "reason": f"{letter.reason} [original dropped: {why}]"[:4000],
    })


def publish_dead_letter(
    producer: Producer, topic: str, letter: DeadLetter,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """Produce a dead letter keyed like the original, so per-key order is kept there too.

    If the producer refuses it as it is (too large for this client, say), the letter goes
    without the original bytes; only when even that is refused does this raise.
    """
    try:
        producer.produce(topic, key=letter.original_key, value=encode(letter), on_delivery=on_delivery)
    except KafkaException as exc:
        bare = without_original(letter, str(exc.args[0]) if exc.args else type(exc).__name__)
        producer.produce(topic, key=None, value=encode(bare), on_delivery=on_delivery)
