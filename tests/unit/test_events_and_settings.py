from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.events import DeadLetter, DecodeError, FeedbackEvent, ListingEvent, TagEvent, decode, encode
from shared.schemas import stale_schemas
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_round_trip_every_event_type() -> None:
    ts = datetime(2026, 5, 1, 12, tzinfo=UTC)
    events = [
        ListingEvent(event_id="e", listing_id="l", op="created", title="t", attributes={"Color": "Red"}, ts=ts),
        TagEvent(listing_id="l", tags=[], model_name="m", model_version="1", source_event_id="e", ts=ts),
        FeedbackEvent(event_id="f", user_id="u", listing_id="l", type="purchase", quantity=2, price=9.5, ts=ts),
        DeadLetter(original=b"\x00\xff", original_key=None, topic="t", partition=1, offset=7,
                   error_class="ValueError", reason="bad", service="tagger", ts=ts),
    ]
    for ev in events:
        assert decode(type(ev), encode(ev)) == ev
        assert ev.schema_version in (1, 2)


def test_timestamps_are_normalised_to_utc() -> None:
    naive = ListingEvent(event_id="e", listing_id="l", op="created", title="t", ts=datetime(2026, 1, 1))
    offset = ListingEvent(event_id="e", listing_id="l", op="created", title="t",
                          ts=datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))))
    assert naive.ts.tzinfo == UTC and offset.ts == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b'{"event_id": "e", "listing_id": "l", "op": "created", "title": "", "ts": "2026-01-01T00:00:00Z"}',
        b'{"event_id": "e", "listing_id": "l", "op": "created", "title": "t", "ts": "2026-01-01T00:00:00Z",'
        b' "surprise": 1}',
        b'{"event_id": "e", "listing_id": "l", "op": "created", "title": "t", "ts": "2026-01-01T00:00:00Z",'
        b' "schema_version": 3}',
    ],
)
def test_invalid_listings_are_rejected_with_a_reason(raw: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        decode(ListingEvent, raw)
    assert err.value.reason.startswith("ListingEvent: ") and "\n" not in err.value.reason


def test_feedback_rejects_negative_quantity_and_unknown_type() -> None:
    base = {"event_id": "f", "user_id": "u", "listing_id": "l", "ts": "2026-01-01T00:00:00Z"}
    with pytest.raises(ValidationError):
        FeedbackEvent.model_validate({**base, "type": "click", "quantity": -1})
    with pytest.raises(ValidationError):
        FeedbackEvent.model_validate({**base, "type": "wishlist"})


def test_json_schemas_in_repo_are_current() -> None:
    assert stale_schemas(ROOT / "schemas") == [], "run `tagloop schemas write`"


def test_settings_from_env_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAGLOOP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TAGLOOP_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("TAGLOOP_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("TAGLOOP_TOPICS__PARTITIONS", "12")
    s = Settings()
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092" and s.topics.partitions == 12
    assert "s3cret" not in repr(s)  # secrets never show in logs


def test_stack_file_is_read_but_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAGLOOP_STATE_DIR", str(tmp_path))
    (tmp_path / "stack.json").write_text(
        '{"settings": {"kafka": {"bootstrap_servers": "127.0.0.1:1111"}, "database_url": "postgresql://x"}}'
    )
    assert Settings().kafka.bootstrap_servers == "127.0.0.1:1111"
    monkeypatch.setenv("TAGLOOP_DATABASE_URL", "postgresql://from-env")
    assert Settings().database_url == "postgresql://from-env"


def test_suffixed_topics_keep_partitions_and_rename_every_topic() -> None:
    base = Settings().topics.model_copy(update={"partitions": 7})
    t = base.suffixed("x1")
    assert (t.listings, t.tags, t.feedback, t.dead_letter, t.user_affinity) == (
        "listings-x1", "listing-tags-x1", "feedback-x1", "dead-letter-x1", "user-affinity-x1")
    assert t.partitions == 7


def test_feedback_v2_adds_position_and_v1_events_stay_valid() -> None:
    v1 = b'{"schema_version": 1, "event_id": "f", "user_id": "u", "listing_id": "l", "type": "click",' \
         b' "ts": "2026-01-01T00:00:00Z"}'
    old = decode(FeedbackEvent, v1)
    assert old.schema_version == 1 and old.position is None
    new = FeedbackEvent(event_id="f", user_id="u", listing_id="l", type="click", position=3,
                        ts=datetime(2026, 1, 1, tzinfo=UTC))
    assert new.schema_version == 2 and decode(FeedbackEvent, encode(new)).position == 3
    with pytest.raises(DecodeError):
        decode(FeedbackEvent, v1.replace(b'"type"', b'"position": 0, "type"'))
