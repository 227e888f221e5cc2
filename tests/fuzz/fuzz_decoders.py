"""Coverage-guided fuzzing of the decoders at the edge (atheris, libFuzzer underneath).

Every input goes to ``decode`` for the three consumed event types, the tagger's
``decode_listing`` and the feedback worker's ``decode_feedback`` / ``decode_tags``
(under no key, the event's own key and a hostile one, plus a tombstone keyed by the
input). Any exception but :class:`~shared.events.DecodeError` is a crash, and so is a
decoded event that does not survive a re-encode, or a record that comes back other
than exactly once (as an event or a dead letter).

Run from the repository root; libFuzzer's flags follow the corpus folders::

    .venv/bin/python -m tests.fuzz.fuzz_decoders CORPUS_DIR -max_total_time=60 -max_len=32768

On a crash libFuzzer writes the input to ``<artifact_prefix>crash-<sha1>`` and exits non-zero.
"""

from __future__ import annotations

import sys

import atheris

# The heavy dependencies load uninstrumented; only our own code gives coverage feedback
# (pydantic's validation runs in Rust, which atheris cannot see anyway).
import confluent_kafka  # noqa: F401
import faust  # noqa: F401
import orjson  # noqa: F401
import pydantic  # noqa: F401

with atheris.instrument_imports(include=["shared", "services"]):
    from services.feedback.app import decode_feedback, decode_tags
    from services.tagger.core import RawRecord, decode_listing
    from shared.events import DecodeError, Event, FeedbackEvent, ListingEvent, TagEvent, decode, encode

MODELS: tuple[type[Event], ...] = (ListingEvent, FeedbackEvent, TagEvent)
MAX_BYTES = 1_000_000


def _own_key(event: Event | None) -> bytes | None:
    value = getattr(event, "user_id", None) or getattr(event, "listing_id", None)
    return value.encode() if isinstance(value, str) else None


def test_one_input(raw: bytes) -> None:
    """Feed ``raw`` to every decoder; raise on anything but a valid event or a DecodeError."""
    decoded: dict[type[Event], Event | None] = {}
    for model in MODELS:
        try:
            event = decode(model, raw)
        except DecodeError as exc:
            if not exc.reason:
                raise AssertionError(f"{model.__name__}: DecodeError without a reason") from exc
            decoded[model] = None
            continue
        if decode(model, encode(event)) != event:
            raise AssertionError(f"{model.__name__} does not survive a re-encode: {event!r}")
        decoded[model] = event

    hostile_key = raw[:64]
    for model, topic in ((ListingEvent, "listings"), (FeedbackEvent, "feedback"), (TagEvent, "listing-tags")):
        records = [RawRecord(topic, 0, offset, key, raw)
                   for offset, key in enumerate((None, _own_key(decoded[model]), hostile_key))]
        if model is ListingEvent:
            for record in records:
                try:
                    listing = decode_listing(record)
                except DecodeError:
                    continue
                if record.key is not None and record.key != listing.listing_id.encode():
                    raise AssertionError(f"decode_listing accepted {listing.listing_id!r} under key {record.key!r}")
            continue
        records.append(RawRecord(topic, 0, len(records), raw[:300], None))  # a tombstone keyed by the input
        decoder = decode_feedback if model is FeedbackEvent else decode_tags
        good, bad = decoder(records, max_bytes=MAX_BYTES)
        offsets = sorted([g.offset for g in good] + [b.offset for b in bad])
        if offsets != list(range(len(records))):
            raise AssertionError(f"{decoder.__name__} returned offsets {offsets} for {len(records)} records")
        if any(not letter.reason for letter in bad):
            raise AssertionError(f"{decoder.__name__}: a dead letter without a reason")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
