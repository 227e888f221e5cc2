"""Issue 9's two tagger defects, reproduced on the real broker and Triton.

* A listing of several MB (a poison pill): its dead letter used to carry the whole
  original, larger than a record may be; ``produce`` raised MSG_SIZE_TOO_LARGE and the
  tagger exited, again on every restart at the same offset.
* A failed delivery: the batch was popped and the error raised, then the shutdown drain
  committed the *later* batches' offsets, so the failed batch's listings were skipped
  for good.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from services.tagger.inference import build_backend
from services.tagger.pipeline import DeliveryFailed, TaggerOptions, TaggerPipeline
from shared.events import DeadLetter, decode, encode
from shared.kafka import producer_config
from shared.settings import Settings
from tests.integration.test_tagger_faults import (
    TaggerProcess,
    TopicTail,
    end_offsets,
    malformed_messages,
    real_listings,
    tag_events,
    wait_committed,
)
from tests.support import InProcessTagger, committed_offsets

pytestmark = pytest.mark.integration

MB = 1024 * 1024


@pytest.mark.timeout(600)
def test_a_3mb_listing_is_dead_lettered_cut_to_size_and_the_tagger_goes_on(
    stack_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    s = stack_settings
    good = real_listings(data_dir, 40, offset=3000)
    bad = malformed_messages(12)
    base = good[0].model_dump(mode="json")
    too_long = {**base, "listing_id": "huge-description", "event_id": "huge-1", "description": "lorem " * 524_288}
    # Valid, and several MB: only the model's text is bounded.
    huge_valid = good[1].model_copy(update={"attributes": {f"spec {i}": "x" * 9_000 for i in range(340)}})
    import orjson

    # The test's producer may write big records (tansu accepts them); the tagger's may not.
    producer = Producer(producer_config(s.kafka) | {"message.max.bytes": 16 * MB})
    for i, listing in enumerate(good):
        value = encode(huge_valid) if i == 1 else encode(listing)
        producer.produce(s.topics.listings, key=listing.listing_id.encode(), value=value)
        if i == 5:
            producer.produce(s.topics.listings, key=b"huge-description", value=orjson.dumps(too_long))
        if i < len(bad):
            key, value_, _ = bad[i]
            producer.produce(s.topics.listings, key=key, value=value_)
    assert producer.flush(30) == 0

    group = f"tagger-poison-{uuid.uuid4().hex[:6]}"
    tagger = TaggerProcess("tagger-poison", s, tmp_path, group, batch_size=8)
    tags, dead = TopicTail(s, s.topics.tags), TopicTail(s, s.topics.dead_letter)
    try:
        tagger.start()
        tagger.wait_ready(180)
        pid = tagger.pid()
        tags.wait(lambda ms: len(ms) >= 40, 300, "40 tag events")
        dead.wait(lambda ms: len(ms) >= 13, 60, "13 dead letters")
        wait_committed(s, group, end_offsets(s, s.topics.listings, s.topics.partitions), 60)
        events, letters_raw = tag_events(tags.settle(2.0)), dead.settle(1.0)
        assert tagger.running() and tagger.pid() == pid, f"the tagger exited:\n{tagger.log_tail()}"
    finally:
        tagger.stop()
        tags.close()
        dead.close()

    assert sorted(e.listing_id for e in events) == sorted(lst.listing_id for lst in good)
    letters = [decode(DeadLetter, m.value()) for m in letters_raw]
    assert len(letters) == 13
    assert all(len(m.value()) <= s.kafka.max_record_bytes for m in letters_raw)
    (big,) = [letter for letter in letters if letter.original_key == b"huge-description"]
    assert big.original_truncated and big.original_size == len(orjson.dumps(too_long))
    assert "description" in big.reason and "cut to fit" in big.reason
    assert big.topic == s.topics.listings and big.offset >= 0  # where the whole original is


class LosesOneDelivery:
    """The tagger's real producer, except that the tag record of one listing is never sent and
    its delivery report says it timed out (as when the broker is unreachable past message.timeout.ms)."""

    def __init__(self, producer: Producer, topic: str, key: bytes) -> None:
        self._producer, self._topic, self._key = producer, topic, key
        self._due: list[Any] = []
        self.lost = 0

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                on_delivery: Any = None, **kw: Any) -> None:
        if topic == self._topic and key == self._key and not self.lost:
            self.lost += 1
            self._due.append(on_delivery)
            return
        self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery, **kw)

    def poll(self, timeout: float = 0) -> int:
        self._report()
        return self._producer.poll(timeout)

    def flush(self, timeout: float = -1) -> int:
        self._report()
        return self._producer.flush(timeout)

    def _report(self) -> None:
        due, self._due = self._due, []
        for on_delivery in due:
            on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


@pytest.mark.timeout(600)
def test_no_offset_at_or_past_a_failed_delivery_is_committed(stack_settings: Settings, data_dir: Path) -> None:
    s = stack_settings
    listings = real_listings(data_dir, 40, offset=3100)
    producer = Producer(producer_config(s.kafka))
    for listing in listings:  # one partition: the later batches are on the failed batch's partition
        producer.produce(s.topics.listings, key=listing.listing_id.encode(), value=encode(listing), partition=0)
    assert producer.flush(30) == 0
    victim = listings[2]
    group = f"tagger-lost-{uuid.uuid4().hex[:6]}"

    class Pipeline(TaggerPipeline):
        def _build_clients(self) -> Any:
            consumer, real = super()._build_clients()
            self.lossy = LosesOneDelivery(real, s.topics.tags, victim.listing_id.encode())
            return consumer, self.lossy

    async def run_until_it_fails() -> Pipeline:
        pipeline = Pipeline(s, await build_backend(s), TaggerOptions(group_id=group, batch_size=4, max_inflight=4))
        with pytest.raises(DeliveryFailed):
            await asyncio.wait_for(pipeline.run(asyncio.Event()), timeout=300)
        return pipeline

    pipeline = asyncio.run(run_until_it_fails())
    assert pipeline.lossy.lost == 1
    committed = committed_offsets(s.kafka, group, s.topics.listings, s.topics.partitions)
    assert committed[0] <= 2, f"committed past the listing whose tags were lost: {committed}"

    # The next owner of the partition redoes the work: every listing ends with its tag event.
    tags = TopicTail(s, s.topics.tags)
    try:
        with InProcessTagger(s, group_id=group, batch_size=8):
            tags.wait(lambda ms: {e.listing_id for e in tag_events(ms)} >= {x.listing_id for x in listings},
                      300, "every listing tagged")
    finally:
        tags.close()


