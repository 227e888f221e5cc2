"""The tagger pipeline: listings → decode/plan → Triton → listing-tags → commit.

Reads top to bottom in :meth:`TaggerPipeline.run`. Guarantees:

* Offsets are committed only after every record a batch produced (tags, tombstones,
  dead letters) is delivered, in batch order; so nothing acknowledged is lost. Once any
  delivery has failed, this process commits nothing more (not even later batches that
  were delivered) and stops: the next owner of the partition redoes the work.
* A record that cannot be produced as it is (too large, refused by the broker) is that
  record's failure, not the process's: its input is dead-lettered with the reason. Dead
  letters are cut to fit the topic, so a poison pill cannot stop the tagger.
* Output for a listing version is deterministic and produced idempotently, so a
  redelivery after a crash repeats an identical record (a processing ``ts`` aside).
* Several batches are inferred concurrently (``max_inflight``); when that bound is
  reached, or the Triton circuit is open, consumption pauses (backpressure).
* On a partition revocation the in-flight work is finished, delivered and committed
  before the partitions go, so a rebalance neither loses nor duplicates output.
* ``transactional=True`` wraps each batch's output and offsets in a Kafka transaction
  (Apache Kafka; the local tansu broker does not implement transactions correctly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import BaseModel, ValidationError

from services.tagger.core import (
    DEFAULT_MAX_TEXT_CHARS,
    BatchPlan,
    OutRecord,
    RawRecord,
    SeenContent,
    next_offsets,
    plan_batch,
    tag_record,
    tombstone_record,
)
from services.tagger.inference import TagBackend
from services.tagger.listing_sample import ListingSample
from services.tagger.metrics import TaggerMetrics
from services.tagger.resilience import CircuitBreaker, CircuitState, call_with_retry
from services.tagger.rollout import Rollout, Routed, ShadowResult
from shared.dead_letters import make_dead_letter, without_original
from shared.events import DeadLetter, decode, encode
from shared.kafka import consumer_config, producer_config
from shared.settings import Settings
from shared.triton_client import is_retryable

log = logging.getLogger(__name__)
SERVICE = "tagger"


class TaggerOptions(BaseModel):
    """Knobs of one tagger process."""

    group_id: str = "tagloop-tagger"
    batch_size: int = 32
    max_wait_s: float = 0.05
    max_inflight: int = 4
    transactional: bool = False
    transactional_id: str | None = None
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # of a listing's text sent to the model
    model_version: int | None = None  # pin the tag model's version (a backfill); None: follow the registry


# Broker answers that say "this record can never be written": the record's fault, not the process's.
RECORD_FAULTS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
})


class DeliveryFailed(RuntimeError):
    """A record was not delivered for a reason that is not the record's own: stop, commit nothing more."""


@dataclass
class BatchResult:
    records: list[OutRecord]  # in input order, each with the consumed record it answers
    event_ts: list[float]  # listing ts (epoch s) of each tag record, for end-to-end latency


@dataclass
class Inflight:
    """One consumed batch on its way through inference and delivery."""

    task: asyncio.Task[BatchResult]
    offsets: dict[tuple[str, int], int]
    pending: int = 0
    failed: KafkaError | None = None
    published: bool = False
    event_ts: list[float] = field(default_factory=list)


def to_raw(msg: Message) -> RawRecord:
    return RawRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value())


class TaggerPipeline:
    """One tagger process: a consumer-group member on ``listings``."""

    def __init__(
        self,
        settings: Settings,
        backend: TagBackend | Rollout,
        options: TaggerOptions | None = None,
        metrics: TaggerMetrics | None = None,
    ) -> None:
        self.settings = settings
        # What tags the next batch: the champion, and during a rollout a candidate (see rollout.py).
        self.rollout = backend if isinstance(backend, Rollout) else Rollout(backend)
        self.options = options or TaggerOptions()
        self.metrics = metrics or TaggerMetrics()
        self.breaker = CircuitBreaker(on_change=self._on_circuit)
        self.seen = SeenContent()
        self.listing_sample = ListingSample(settings.tagger.listing_sample_size)  # the trainer's drift input
        self.inflight: deque[Inflight] = deque()
        self.assigned: set[tuple[str, int]] = set()
        self.paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        # The first delivery that failed: from then on this process commits nothing.
        self.delivery_failed: KafkaError | None = None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None

    # -- the pipeline, top to bottom -------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, infer, publish and commit until ``stop`` is set; then drain and close."""
        self._loop = asyncio.get_running_loop()
        self.consumer, self.producer = self._build_clients()
        self.consumer.subscribe(
            [self.settings.topics.listings], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not stop.is_set():
                self._apply_backpressure()
                msgs = await asyncio.to_thread(
                    self.consumer.consume, self.options.batch_size,
                    self.options.max_wait_s if not self.paused else 0.1,
                )
                records = [to_raw(m) for m in msgs if not self._is_error(m)]
                if records:
                    self.metrics.consumed.inc(len(records))
                    task = asyncio.create_task(self._process(records))
                    self.inflight.append(Inflight(task, next_offsets(records)))
                    self.metrics.inflight.set(len(self.inflight))
                await self._publish_finished(block=False)
                self.producer.poll(0)
                self._commit_delivered()
        finally:
            await self._shutdown()

    async def _process(self, records: list[RawRecord]) -> BatchResult:
        """decode → plan → infer (with retries) → records to publish, in input order."""
        rollout = self.rollout  # this batch's versions, even if a new rollout is swapped in meanwhile
        plan = plan_batch(records, self.seen, rollout.fingerprint, self.options.max_text_chars)
        by_record: dict[tuple[int, int], OutRecord] = {}
        tagged = await self._infer(plan, rollout)
        topic = self.settings.topics.tags
        event_ts: list[float] = []
        shadow: list[OutRecord] = []
        for item in plan.to_tag:
            result = tagged.get(item.record.offset, item.record.partition)
            if isinstance(result, Exception):
                self.seen.forget(item.listing.listing_id)
                by_record[_key(item.record)] = self._dead_letter(item.record, result)
                continue
            try:
                by_record[_key(item.record)] = tag_record(topic, item, result.tags, result.stamp.name,
                                                          result.stamp.version)
            except ValidationError as exc:  # the model's output breaks the event contract: never crash on it
                self.seen.forget(item.listing.listing_id)
                by_record[_key(item.record)] = self._dead_letter(item.record, exc)
                continue
            self.metrics.by_version.labels(result.stamp.version).inc()
            self.listing_sample.offer(item.listing.listing_id, item.text)
            event_ts.append(item.listing.ts.timestamp())
            side = tagged.shadow(item.record.offset, item.record.partition)
            if side is not None:
                shadow.append(tag_record(self.settings.topics.shadow_tags, item, side.tags, side.stamp.name,
                                         side.stamp.version))
                self.metrics.shadow_items.inc()
                if {t.tag_id for t in side.tags} != {t.tag_id for t in result.tags}:
                    self.metrics.shadow_disagreements.inc()
        for record, listing in plan.deleted:
            by_record[_key(record)] = tombstone_record(topic, listing, record)
        for rej in plan.rejected:
            by_record[_key(rej.record)] = self._dead_letter(rej.record, rej.error)
        self.metrics.skipped_unchanged.inc(len(plan.unchanged))
        # Input order: a listing deleted then re-created within one batch must end tagged, not tombstoned.
        out = [by_record[k] for k in map(_key, records) if k in by_record]
        return BatchResult(out + shadow, event_ts)

    async def _infer(self, plan: BatchPlan, rollout: Rollout) -> _Results:
        """Tags per listing; a batch Triton rejects is split to isolate the invalid listings."""
        results = _Results()
        if not plan.to_tag:
            return results
        self.metrics.batch_size.observe(len(plan.to_tag))
        items = [(item.text, item.listing.listing_id, (item.record.offset, item.record.partition))
                 for item in plan.to_tag]
        await self._infer_into(items, rollout, results)
        return results

    async def _infer_into(
        self, items: list[tuple[str, str, tuple[int, int]]], rollout: Rollout, results: _Results
    ) -> None:
        started = time.perf_counter()
        texts, ids = [t for t, _, _ in items], [i for _, i, _ in items]
        try:
            routed, shadow = await call_with_retry(
                lambda: rollout.tag(texts, ids), is_retryable=is_retryable, breaker=self.breaker,
                ready=rollout.ready,
            )
        except Exception as exc:  # not retryable: invalid input somewhere in this batch
            if len(items) == 1:
                results.put(items[0][2], exc)
                return
            mid = len(items) // 2
            await self._infer_into(items[:mid], rollout, results)
            await self._infer_into(items[mid:], rollout, results)
            return
        self.metrics.triton_latency.observe(time.perf_counter() - started)
        for (_, _, key), item_tags in zip(items, routed, strict=True):
            results.put(key, item_tags)
        for side in shadow:
            results.put_shadow(items[side.index][2], side)

    def swap(self, rollout: Rollout) -> Rollout:
        """Tag the next batches with ``rollout`` (batches in flight finish with theirs); returns the old one.

        The caller closes the old rollout's clients once nothing uses them (at shutdown).
        """
        old, self.rollout = self.rollout, rollout
        log.info("now tagging with %s", rollout.fingerprint, extra={"model_version": rollout.fingerprint})
        return old

    # -- publish and commit ---------------------------------------------------------

    async def _publish_finished(self, block: bool) -> None:
        """Publish finished batches strictly in consumption order (keeps per-listing order)."""
        while self.inflight:
            head = next((b for b in self.inflight if not b.published), None)
            if head is None:
                return
            if not head.task.done():
                if not block:
                    return
                await asyncio.wait({head.task})
            self._publish(head, head.task.result())

    def _publish(self, batch: Inflight, result: BatchResult) -> None:
        assert self.producer is not None and self.consumer is not None
        if self.options.transactional:
            self.producer.begin_transaction()
        for rec in result.records:
            self._produce(rec, batch)
        batch.published = True
        batch.event_ts = result.event_ts
        if self.options.transactional:
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()],
                self.consumer.consumer_group_metadata(),
            )
            self.producer.commit_transaction()

    def _produce(self, rec: OutRecord, batch: Inflight) -> None:
        """Produce one record; one that cannot be produced as it is gets its input dead-lettered."""
        assert self.producer is not None
        batch.pending += 1

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            batch.pending -= 1
            if err is None:
                return
            if err.code() in RECORD_FAULTS and self._replace(rec, batch, f"the broker refused it: {err.str()}"):
                return
            batch.failed = batch.failed or err

        while True:
            try:
                self.producer.produce(rec.topic, key=rec.key, value=rec.value, on_delivery=delivered)
                break
            except BufferError:  # local queue full: serve deliveries, then retry
                self.producer.poll(0.05)
            except KafkaException as exc:  # refused before sending (too large for this client, ...)
                batch.pending -= 1
                err = exc.args[0]
                if not self._replace(rec, batch, f"the producer refused it: {err.str()}"):
                    raise DeliveryFailed(f"cannot produce to {rec.topic}: {err}") from exc
                return
        self._count(rec)

    def _replace(self, rec: OutRecord, batch: Inflight, why: str) -> bool:
        """Stand-in for a record that can never be written; False when there is none left to try.

        Output for a listing becomes a dead letter of the listing; a dead letter loses its
        original bytes (it keeps where the original is and why it failed).
        """
        if rec.topic != self.settings.topics.dead_letter:
            if rec.source is None:
                return False
            letter = self._dead_letter(rec.source, RuntimeError(f"tag output for this listing not written: {why}"))
        else:
            old = decode(DeadLetter, rec.value)
            if not old.original and old.original_key is None:
                return False  # already bare: nothing left to drop
            bare = without_original(old, why)
            letter = OutRecord(rec.topic, None, encode(bare), rec.source)
        log.warning("record for %s refused (%s); dead-lettering instead", rec.key, why)
        self._produce(letter, batch)
        return True

    def _count(self, rec: OutRecord) -> None:
        if rec.topic == self.settings.topics.dead_letter:
            # By error class (dead letters are rare: decoding one to label it costs nothing that matters).
            reason = decode(DeadLetter, rec.value).error_class if rec.value is not None else "unknown"
            self.metrics.dead_lettered.labels(reason).inc()
        else:
            self.metrics.produced.labels("tombstone" if rec.value is None else "tags").inc()

    def _commit_delivered(self, asynchronous: bool = True, commit: bool = True) -> list[TopicPartition]:
        """Commit (unless ``commit=False``) the offsets of leading batches whose every record was delivered.

        Raises :class:`DeliveryFailed` at the first batch with an undelivered record; from then
        on nothing is committed by this process, whatever was delivered after it.
        """
        assert self.consumer is not None
        if self.delivery_failed is not None:
            return []
        offsets: dict[tuple[str, int], int] = {}
        now = time.time()
        while self.inflight and self.inflight[0].published and self.inflight[0].pending == 0:
            batch = self.inflight.popleft()
            if batch.failed is not None:
                # Never commit at or past a record that was not delivered: stop, the next owner redoes it.
                self.delivery_failed = batch.failed
                raise DeliveryFailed(f"delivery failed, nothing more is committed: {batch.failed}")
            for ts in batch.event_ts:
                self.metrics.end_to_end.observe(max(0.0, now - ts))
            offsets.update(batch.offsets)
        self.metrics.inflight.set(len(self.inflight))
        owned = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self.assigned]
        if owned and commit and not self.options.transactional:
            if asynchronous:
                self.consumer.commit(offsets=owned, asynchronous=True)
            else:
                self.consumer.commit(offsets=owned, asynchronous=False)
        return owned

    async def _drain(self, commit: bool = True) -> list[TopicPartition]:
        """Finish, publish and deliver everything in flight (before a revoke or at shutdown)."""
        assert self.producer is not None
        await self._publish_finished(block=True)
        while any(b.pending for b in self.inflight):
            self.producer.flush(1.0)
        return self._commit_delivered(asynchronous=False, commit=commit)

    # -- backpressure, rebalance, shutdown ------------------------------------------

    def _apply_backpressure(self) -> None:
        assert self.consumer is not None
        want_pause = len(self.inflight) >= self.options.max_inflight or self.breaker.is_open
        if want_pause == self.paused:
            return
        parts = [TopicPartition(t, p) for t, p in self.assigned]
        if parts:
            (self.consumer.pause if want_pause else self.consumer.resume)(parts)
        self.paused = want_pause
        self.metrics.paused.set(1 if want_pause else 0)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned |= new
        # What we remember of a partition from an earlier ownership may be stale: forget it
        # (on the loop thread, before any batch of these partitions is planned there).
        if new and self._loop is not None:
            self._loop.call_soon_threadsafe(self.seen.forget_partitions, new)
        if self.paused and partitions:
            consumer.pause(partitions)
        log.info("assigned %s", sorted(self.assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs inside consume() on the worker thread while the event loop is free:
        # finish the work for these partitions there, then commit before letting go.
        # The commit is made here, on this thread: a synchronous commit from the loop
        # thread while this one sits in the rebalance callback deadlocks librdkafka.
        if self._loop is not None and self.inflight and not self._closing:
            owned = asyncio.run_coroutine_threadsafe(self._drain(commit=False), self._loop).result()
            if owned and not self.options.transactional:
                consumer.commit(offsets=owned, asynchronous=False)
        self.assigned -= {(tp.topic, tp.partition) for tp in partitions}

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): another member may own them already; do not commit for them.
        self.assigned -= {(tp.topic, tp.partition) for tp in partitions}

    def _on_circuit(self, state: CircuitState) -> None:
        self.metrics.circuit_open.set(1 if state == CircuitState.OPEN else 0)

    def _on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                lag = pstats.get("consumer_lag", -1)
                if int(pid) >= 0 and lag >= 0:
                    self.metrics.consumer_lag.labels(topic, pid).set(lag)

    def ready(self) -> bool:
        return bool(self.assigned) and not self.breaker.is_open

    async def _shutdown(self) -> None:
        """Finish in-flight work (or abort the open transaction), then close clients."""
        try:
            if self.consumer is not None and self.producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._drain(), timeout=30)
                if self.options.transactional:
                    with contextlib.suppress(Exception):
                        self.producer.abort_transaction(5)
                self.producer.flush(10)
        finally:
            self._closing = True
            for b in self.inflight:
                b.task.cancel()
            if self.consumer is not None:
                self.consumer.close()
            await self.rollout.close()

    # -- helpers --------------------------------------------------------------------

    def _build_clients(self) -> tuple[Consumer, Producer]:
        k = self.settings.kafka
        cconf = consumer_config(k, self.options.group_id, read_committed=self.options.transactional)
        cconf["statistics.interval.ms"] = 5000
        cconf["stats_cb"] = self._on_stats
        consumer = Consumer(cconf)
        tid = self.options.transactional_id if self.options.transactional else None
        producer = Producer(producer_config(k, transactional_id=tid or (
            f"{self.options.group_id}-tx" if self.options.transactional else None)))
        if self.options.transactional:
            producer.init_transactions(30)
        return consumer, producer

    def _dead_letter(self, record: RawRecord, error: BaseException) -> OutRecord:
        log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, error,
                    extra={"listing_id": (record.key or b"").decode(errors="replace"), "topic": record.topic,
                           "partition": record.partition, "offset": record.offset, "reason": type(error).__name__})
        letter = make_dead_letter(
            topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
            value=record.value, error=error, service=SERVICE, max_bytes=self.settings.kafka.max_record_bytes,
        )
        return OutRecord(self.settings.topics.dead_letter, letter.original_key, encode(letter), record)

    @staticmethod
    def _is_error(msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err)
        return True


def _key(record: RawRecord) -> tuple[int, int]:
    return (record.partition, record.offset)


class _Results:
    """Inference results keyed by (offset, partition) of the listing record."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], Routed | Exception] = {}
        self._shadow: dict[tuple[int, int], ShadowResult] = {}

    def put(self, key: tuple[int, int], value: Routed | Exception) -> None:
        self._by_key[key] = value

    def put_shadow(self, key: tuple[int, int], value: ShadowResult) -> None:
        self._shadow[key] = value

    def get(self, offset: int, partition: int) -> Routed | Exception:
        return self._by_key[(offset, partition)]

    def shadow(self, offset: int, partition: int) -> ShadowResult | None:
        return self._shadow.get((offset, partition))
