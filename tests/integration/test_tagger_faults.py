"""Fault tests of the tagger with real processes: kill -9, Triton down 30 s, malformed input.

Every tagger here is ``python -m services.tagger.main`` in its own process (ManagedProcess),
configured only by ``TAGLOOP_`` environment variables, against the session's real broker
and a real Triton. The helpers are reused by ``test_tagger_semantics.py``.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.simulator.listings import flipkart_records, listing_from_record, produce_listings
from shared.devstack.process import ManagedProcess, free_port
from shared.devstack.triton import (
    TritonEndpoints,
    ensure_stub_env,
    find_triton_dist,
    model_ready,
    prepare_backend_dir,
    triton_argv,
    triton_env,
    triton_ready,
    tritonserver_available,
)
from shared.events import DeadLetter, ListingEvent, TagEvent, decode, encode
from shared.kafka import consumer_config, producer_config
from shared.settings import Settings
from tests.support import committed_offsets, with_triton

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ENCODER = "minilm_encoder"


# -- helpers (shared with test_tagger_semantics) ----------------------------------------


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class TaggerProcess:
    """One real tagger process (``python -m services.tagger.main``) configured by TAGLOOP_ env vars."""

    def __init__(
        self, name: str, settings: Settings, workdir: Path, group: str, batch_size: int = 16,
        max_inflight: int = 4,
    ) -> None:
        self.settings = settings
        self.proc = ManagedProcess(name, workdir)
        self.port = free_port()
        self.argv = [
            sys.executable, "-m", "services.tagger.main", "--group-id", group, "--batch-size", str(batch_size),
            "--max-inflight", str(max_inflight), "--http-port", str(self.port),
        ]
        empty_repo = workdir / "no-models"  # zero-shot on the encoder: no trained tag model to probe
        empty_repo.mkdir(exist_ok=True)
        s, t = settings, settings.topics
        self.env = os.environ | {
            "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "TAGLOOP_TRITON__GRPC_URL": s.triton.grpc_url,
            "TAGLOOP_TRITON__HTTP_URL": s.triton.http_url,
            "TAGLOOP_TOPICS__LISTINGS": t.listings,
            "TAGLOOP_TOPICS__TAGS": t.tags,
            "TAGLOOP_TOPICS__DEAD_LETTER": t.dead_letter,
            "TAGLOOP_STATE_DIR": str(s.state_dir),  # the label-embedding cache
            "TAGLOOP_DATA_DIR": str(s.data_dir),
            "TAGLOOP_TRITON_MODEL_REPOSITORY": str(empty_repo),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> int:
        return self.proc.start(self.argv, env=self.env, cwd=REPO_ROOT)

    def pid(self) -> int | None:
        return self.proc.pid()

    def running(self) -> bool:
        return self.proc.running()

    def kill(self) -> None:
        self.proc.kill()

    def stop(self, timeout_s: float = 30) -> bool:
        return self.proc.stop(timeout_s=timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.proc.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.running():
                raise AssertionError(f"{self.proc.name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.proc.name} not ready after {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.25)

    def tags_produced(self) -> float:
        return self.metrics().get("tagloop_tagger_events_produced_total{kind=tags}", 0.0)

    def metrics(self) -> dict[str, float]:
        """Sample name (with labels) → value, from /metrics."""
        code, text = self._get("/metrics")
        if code != 200:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out


class TopicTail:
    """Reads a whole topic from offset 0 (assigned, no group) and keeps what it read."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer(consumer_config(settings.kafka, f"tail-{uuid.uuid4().hex[:8]}"))
        md = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        self.messages: list[Message] = []

    def poll(self, seconds: float = 0.2) -> list[Message]:
        deadline = time.monotonic() + seconds
        while True:
            msgs = self.consumer.consume(500, max(0.0, min(0.2, deadline - time.monotonic())))
            self.messages += [m for m in msgs if m.error() is None]
            if time.monotonic() >= deadline:
                return self.messages

    def wait(self, check: Callable[[list[Message]], bool], timeout_s: float, what: str) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while not check(self.poll(0.3)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} "
                                     f"({len(self.messages)} records read)")
        return self.messages

    def settle(self, seconds: float = 3.0) -> list[Message]:
        """Keep reading a little longer, so late (duplicate) records are seen, not hidden."""
        return self.poll(seconds)

    def close(self) -> None:
        self.consumer.close()


def tag_events(messages: Sequence[Message]) -> list[TagEvent]:
    return [decode(TagEvent, m.value()) for m in messages if m.value() is not None]


def real_listings(data_dir: Path, n: int, offset: int = 0) -> list[ListingEvent]:
    """``n`` real Flipkart listings, one per distinct listing id."""
    out: dict[str, ListingEvent] = {}
    for record in flipkart_records(data_dir, offset + 3 * n):
        if len(out) >= offset + n:
            break
        out.setdefault(record.id, listing_from_record(record))
    return list(out.values())[offset:]


def end_offsets(settings: Settings, topic: str, partitions: int) -> dict[int, int]:
    """Offsets after the last record of each partition, counted by reading (not high watermarks)."""
    tail = TopicTail(settings, topic)
    try:
        seen: dict[int, int] = {}
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            before = len(tail.messages)
            for m in tail.poll(0.3)[before:]:
                p, o = m.partition() or 0, m.offset() or 0
                seen[p] = max(seen.get(p, 0), o + 1)
            if len(tail.messages) > before:
                quiet_since = time.monotonic()
        return {p: seen.get(p, 0) for p in range(partitions)}
    finally:
        tail.close()


def wait_committed(settings: Settings, group: str, expected: dict[int, int], timeout_s: float) -> None:
    topic, n = settings.topics.listings, settings.topics.partitions

    def caught_up() -> bool:
        got = committed_offsets(settings.kafka, group, topic, n)
        return all(got.get(p, -1) >= o for p, o in expected.items() if o > 0)

    wait_for(caught_up, timeout_s, f"group {group} to commit {expected}", interval_s=0.5)


def assert_repeats_identical(events: Sequence[TagEvent]) -> int:
    """Records for one listing version are identical (ts aside); returns how many were repeats."""
    first: dict[tuple[str, str], TagEvent] = {}
    repeats = 0
    for ev in events:
        key = (ev.listing_id, ev.source_event_id)
        if key not in first:
            first[key] = ev
            continue
        repeats += 1
        assert ev.model_copy(update={"ts": first[key].ts}) == first[key], (
            f"repeated record of {key} differs:\n{first[key]}\n{ev}"
        )
    return repeats


class OwnTriton:
    """A Triton of this test alone, restartable on the same ports (the tagger's URL stays valid)."""

    def __init__(self, state_dir: Path, name: str = "triton-fault") -> None:
        dist = find_triton_dist()
        assert dist is not None
        self.dist = dist
        self.state_dir = state_dir
        self.proc = ManagedProcess(name, state_dir)
        self.ports = (free_port(), free_port(), free_port())
        self.endpoints = TritonEndpoints(*(f"127.0.0.1:{p}" for p in self.ports))
        self.backend_dir = prepare_backend_dir(dist, state_dir / f"{name}-backends")
        self.env = triton_env(os.environ, dist, ensure_stub_env())

    def start(self, timeout_s: float = 240) -> None:
        argv = triton_argv(self.dist, REPO_ROOT / "triton_models", self.backend_dir, [ENCODER], *self.ports)
        self.proc.start(argv, env=self.env, cwd=self.state_dir)
        self.proc.wait_ready(functools.partial(triton_ready, self.endpoints.http_url), timeout_s, "triton ready")
        self.proc.wait_ready(functools.partial(model_ready, self.endpoints.http_url, ENCODER), 60, "encoder")

    def stop(self) -> None:
        self.proc.stop(timeout_s=20)


# -- kill -9 --------------------------------------------------------------------------



@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_tags_every_listing(
    stack_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    s = stack_settings
    listings = real_listings(data_dir, 400)
    produce_listings(s, listings)
    group = f"tagger-kill9-{uuid.uuid4().hex[:6]}"
    tagger = TaggerProcess("tagger-kill9", s, tmp_path, group)
    tail = TopicTail(s, s.topics.tags)
    try:
        tagger.start()
        tail.wait(lambda ms: len(ms) >= 100, 300, "100 tags before the kill")
        # Aim the kill just after a batch is handed to the producer: its records are then
        # likely delivered but not yet committed, so the restart repeats them.
        produced = tagger.tags_produced()
        deadline = time.monotonic() + 60
        while tagger.tags_produced() == produced and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.03)
        tagger.kill()  # SIGKILL: no drain, no final commit
        assert not tagger.running()
        before = len(tail.poll(1.0))
        assert before < len(listings), "the kill did not land mid-stream"

        tagger.start()
        ids = {lst.listing_id for lst in listings}
        tail.wait(lambda ms: {e.listing_id for e in tag_events(ms)} >= ids, 480, "a tag for every listing")
        wait_committed(s, group, end_offsets(s, s.topics.listings, s.topics.partitions), 30)
        events = tag_events(tail.settle(3.0))
        assert tagger.stop(timeout_s=30)
    finally:
        tagger.stop()
        tail.close()

    by_id = {lst.listing_id: lst for lst in listings}
    assert {e.listing_id for e in events} == set(by_id)  # none missing, nothing foreign
    assert all(e.source_event_id == by_id[e.listing_id].event_id for e in events)
    repeats = assert_repeats_identical(events)
    # A changelog reader keeps one record per listing version.
    assert len({(e.listing_id, e.source_event_id) for e in events}) == len(listings)
    print(f"kill -9: {len(events)} tag records for {len(listings)} listings, {repeats} identical repeats")


# -- Triton down for 30 s under load ---------------------------------------------------


@pytest.mark.slow
def test_triton_down_30s_under_load_loses_nothing(
    settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    reason = tritonserver_available()
    if reason is not None:
        pytest.skip(f"bundled tritonserver unavailable: {reason}")
    triton = OwnTriton(tmp_path)
    triton.start()
    s = with_triton(settings, triton.endpoints)
    listings = real_listings(data_dir, 300)
    group = f"tagger-triton-{uuid.uuid4().hex[:6]}"
    tagger = TaggerProcess("tagger-triton", s, tmp_path, group)
    tail = TopicTail(s, s.topics.tags)
    errors: list[BaseException] = []

    def produce() -> None:  # steady load for the whole outage: 300 listings over ~60 s
        try:
            produce_listings(s, listings, rate_per_s=5)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        tagger.start()
        tagger.wait_ready(120)
        pid = tagger.pid()
        producer.start()
        tail.wait(lambda ms: len(ms) >= 20, 120, "tags flowing before the outage")

        triton.stop()
        down_at = time.monotonic()
        wait_for(lambda: not tagger.ready(), 30, "the tagger to report not ready (circuit open)")
        opened = tagger.metrics().get("tagloop_tagger_circuit_open")
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        tagged_while_down = len(tail.poll(0.5))
        triton.start()
        up_at = time.monotonic()

        ids = {lst.listing_id for lst in listings}
        producer.join(120)
        assert not errors, errors
        tail.wait(lambda ms: {e.listing_id for e in tag_events(ms)} >= ids, 420, "a tag for every listing")
        wait_committed(s, group, end_offsets(s, s.topics.listings, s.topics.partitions), 60)
        recovered_s = time.monotonic() - up_at
        events = tag_events(tail.settle(2.0))
        metrics = tagger.metrics()
        assert tagger.running() and tagger.pid() == pid, "the tagger restarted"
    finally:
        tagger.stop()
        tail.close()
        triton.stop()

    assert opened == 1.0
    assert {e.listing_id for e in events} == ids
    assert_repeats_identical(events)
    assert metrics.get("tagloop_tagger_events_dead_lettered_total", 0) == 0
    dead = TopicTail(s, s.topics.dead_letter)
    try:
        assert dead.poll(2.0) == [], "listings were dead-lettered while Triton was down"
    finally:
        dead.close()
    assert metrics.get("tagloop_tagger_circuit_open") == 0.0
    print(f"triton outage: {tagged_while_down} tags before/while down, lag recovered {recovered_s:.1f}s "
          "after Triton was back")


# -- malformed input -------------------------------------------------------------------


def malformed_messages(n: int) -> list[tuple[bytes | None, bytes | None, str]]:
    """``n`` broken listing messages of many kinds: (key, value, what)."""
    good = ListingEvent(event_id="x", listing_id="x", op="created", title="Red cotton kurta",
                        ts="2026-01-01T00:00:00Z")  # type: ignore[arg-type]
    base = good.model_dump(mode="json")
    kinds: list[Callable[[int], tuple[bytes | None, bytes | None, str]]] = [
        lambda i: (f"bad-{i}".encode(), b"{not json at all " + str(i).encode(), "not json"),
        lambda i: (f"bad-{i}".encode(), b"\xff\xfe\x00binary-" + str(i).encode(), "binary"),
        lambda i: (f"bad-{i}".encode(), None, "no value"),
        lambda i: (f"bad-{i}".encode(), f"[{i}, 2, 3]".encode(), "json array"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": f"bad-{i}", "title": "  "}, "empty title"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": f"bad-{i}", "op": "exploded"}, "unknown op"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": f"bad-{i}", "ts": "yesterday"}, "bad ts"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": f"bad-{i}", "schema_version": 2}, "schema v2"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": f"bad-{i}", "price": 3}, "unknown field"),
        lambda i: _json(f"bad-{i}", {k: v for k, v in base.items() if k != "event_id"} | {"listing_id": f"bad-{i}"},
                        "no event id"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": f"bad-{i}", "title": "t" * 2001}, "title too long"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": f"bad-{i}", "attributes": {"a": 1}}, "attr type"),
        lambda i: _json("someone-else", base | {"listing_id": f"bad-{i}"}, "key mismatch"),
        lambda i: _json(f"bad-{i}", base | {"listing_id": "", "event_id": f"e{i}"}, "empty id"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def _json(key: str, body: dict[str, object], what: str) -> tuple[bytes | None, bytes | None, str]:
    import orjson

    return key.encode(), orjson.dumps(body), what


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_1000_malformed_mixed_with_1000_good(stack_settings: Settings, data_dir: Path, tmp_path: Path) -> None:
    s = stack_settings
    listings = real_listings(data_dir, 1000, offset=1200)
    bad = malformed_messages(1000)
    producer = Producer(producer_config(s.kafka))
    for i, listing in enumerate(listings):
        producer.produce(s.topics.listings, key=listing.listing_id.encode(), value=encode(listing))
        key, value, _ = bad[i]
        producer.produce(s.topics.listings, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0

    group = f"tagger-malformed-{uuid.uuid4().hex[:6]}"
    tagger = TaggerProcess("tagger-malformed", s, tmp_path, group)
    tags, dead = TopicTail(s, s.topics.tags), TopicTail(s, s.topics.dead_letter)
    try:
        tagger.start()
        tagger.wait_ready(120)
        pid = tagger.pid()
        tags.wait(lambda ms: len(ms) >= 1000, 840, "1000 tags")
        dead.wait(lambda ms: len(ms) >= 1000, 60, "1000 dead letters")
        events, letters_raw = tag_events(tags.settle(2.0)), dead.settle(1.0)
        assert tagger.running() and tagger.pid() == pid, "the tagger restarted"
        assert "Traceback" not in tagger.log_tail(1_000_000)
    finally:
        tagger.stop()
        tags.close()
        dead.close()

    assert len(events) == 1000
    assert {e.listing_id for e in events} == {lst.listing_id for lst in listings}
    letters = [decode(DeadLetter, m.value()) for m in letters_raw]
    assert len(letters) == 1000
    assert Counter(letter.original for letter in letters) == Counter(v or b"" for _, v, _ in bad)
    assert all(letter.reason.strip() and letter.error_class for letter in letters)
    assert all(letter.service == "tagger" and letter.topic == s.topics.listings for letter in letters)
    # Each letter carries the key it came with, so it can be traced back.
    assert Counter(letter.original_key for letter in letters) == Counter(k for k, _, _ in bad)
