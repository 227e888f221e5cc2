"""Tagger benchmark: ``tagloop bench tagger --json``.

Measured in one run, on one machine, with the same model on the same texts:

* **pipeline**: N real Flipkart listings go broker → tagger process → Triton (``minilm_encoder``,
  zero-shot tags) → ``listing-tags``. A warm-up goes first; then the N listings are produced at
  once and ``pipeline_items_per_s`` = N / (last tag record's timestamp − first produce).
* **bare**: the same texts, in-process, without Kafka or Triton: ``MiniLMEncoder().encode`` and
  the same zero-shot tagging, in batches of the same size, once before and once after the pipeline
  (a shared machine's load drifts; the mean is used). ``ratio`` = pipeline / bare (goal ≥ 0.90).
* **latency**: fresh listings produced at about half the measured pipeline rate, each stamped
  with its send time; end-to-end latency = tag record timestamp − listing ``ts``, p50/p99.
* **batch latency**: one inference batch (same size, through the same Triton and tagging code),
  sequential, p50; ``p99_over_batch_p50`` = end-to-end p99 / that p50 (goal ≤ 3). The batches the
  tagger actually formed during the latency run (size, mean Triton time) are reported beside it.

A private broker and Triton are started in a temporary state directory and stopped at the end;
the label-embedding cache lives in the usual state dir (``.tagloop/cache``), as for the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from services.simulator.listings import flipkart_records, listing_from_record, produce_listings
from shared.devstack.process import ManagedProcess, free_port
from shared.events import ListingEvent, TagEvent, decode
from shared.kafka import consumer_config, create_topics, topic_specs
from shared.settings import Settings, TopicSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
ENCODER = "minilm_encoder"
WARMUP = 64


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gib = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    import torch

    return {
        "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": mem_gib, "os": platform.platform(),
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def distinct_listings(data_dir: Path, n: int) -> list[ListingEvent]:
    """``n`` real listings with distinct ids, in file order."""
    out: dict[str, ListingEvent] = {}
    for record in flipkart_records(data_dir):
        out.setdefault(record.id, listing_from_record(record))
        if len(out) >= n:
            break
    return list(out.values())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[int(q * 1000) - 1]


# -- the bare model: same texts, same batch size, no Kafka, no Triton ----------------


def bare_throughput(texts: list[str], batch_size: int, tagger: Any) -> dict[str, float]:
    from shared.encoder import MiniLMEncoder

    encoder = MiniLMEncoder()
    tagger.tag(encoder.encode(texts[:batch_size], batch_size=batch_size))  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        tagger.tag(encoder.encode(chunk, batch_size=batch_size))
    elapsed = time.perf_counter() - started
    return {"bare_items_per_s": len(texts) / elapsed, "bare_seconds": elapsed}


# -- one inference batch through Triton, sequential ----------------------------------


async def _batch_latencies(settings: Settings, texts: list[str], batch_size: int, n_batches: int) -> tuple[
    list[float], Any
]:
    from services.tagger.inference import TritonZeroShotBackend

    backend = await TritonZeroShotBackend.create(settings)  # builds or loads the label cache too
    try:
        batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)][: n_batches + 2]
        for batch in batches[:2]:
            await backend.tag(batch)
        out = []
        for batch in batches[2:]:
            started = time.perf_counter()
            await backend.tag(batch)
            out.append(time.perf_counter() - started)
        return out, backend.tagger
    finally:
        await backend.close()


# -- the pipeline ----------------------------------------------------------------------


class _Tagger:
    """The tagger as its own process, configured like production (TAGLOOP_ env)."""

    def __init__(self, settings: Settings, state: Path, batch_size: int, max_inflight: int) -> None:
        self.port = free_port()
        self.proc = ManagedProcess("bench-tagger", state)
        empty = state / "no-models"
        empty.mkdir(exist_ok=True)
        t = settings.topics
        self.env = os.environ | {
            "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "TAGLOOP_TRITON__GRPC_URL": settings.triton.grpc_url,
            "TAGLOOP_TRITON__HTTP_URL": settings.triton.http_url,
            "TAGLOOP_TOPICS__LISTINGS": t.listings,
            "TAGLOOP_TOPICS__TAGS": t.tags,
            "TAGLOOP_TOPICS__DEAD_LETTER": t.dead_letter,
            "TAGLOOP_STATE_DIR": str(settings.state_dir),
            "TAGLOOP_DATA_DIR": str(settings.data_dir),
            "TAGLOOP_TRITON_MODEL_REPOSITORY": str(empty),  # zero-shot on the encoder
        }
        self.argv = [
            sys.executable, "-m", "services.tagger.main", "--group-id", f"bench-{uuid.uuid4().hex[:6]}",
            "--batch-size", str(batch_size), "--max-inflight", str(max_inflight), "--http-port", str(self.port),
        ]

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except OSError:
            return 0, ""

    def start(self, timeout_s: float = 180) -> None:
        self.proc.start(self.argv, env=self.env, cwd=REPO_ROOT)
        self.proc.wait_ready(lambda: self._get("/readyz")[0] == 200, timeout_s, "tagger ready")

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self._get("/metrics")[1]):
            for sample in family.samples:
                if not sample.labels:
                    out[sample.name] = sample.value
        return out

    def stop(self) -> None:
        self.proc.stop(timeout_s=30)


class _TagReader:
    """Reads listing-tags from offset 0; tag record timestamp (s) per source event id."""

    def __init__(self, settings: Settings) -> None:
        topic = settings.topics.tags
        self.consumer = Consumer(consumer_config(settings.kafka, f"bench-reader-{uuid.uuid4().hex[:6]}"))
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.seen: dict[str, float] = {}

    def wait_for(self, event_ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not event_ids <= self.seen.keys():
            if time.monotonic() > deadline:
                missing = len(event_ids - self.seen.keys())
                raise TimeoutError(f"{missing} of {len(event_ids)} listings not tagged after {timeout_s:.0f}s")
            for m in self.consumer.consume(1000, 0.2):
                if m.error() is None and m.value() is not None:
                    ev = decode(TagEvent, m.value())
                    self.seen.setdefault(ev.source_event_id, m.timestamp()[1] / 1000)

    def close(self) -> None:
        self.consumer.close()


def _produce(settings: Settings, listings: list[ListingEvent], rate_per_s: float | None) -> dict[str, float]:
    """Produce (paced if asked), stamping each listing's ``ts`` with its send time; event id → that time."""
    sent: dict[str, float] = {}
    produce_listings(settings, listings, rate_per_s, stamp_send_time=True,
                     on_sent=lambda listing: sent.__setitem__(listing.event_id, listing.ts.timestamp()))
    return sent


def run_bench(n: int = 1000, batch_size: int = 32, max_inflight: int = 4) -> dict[str, Any]:
    """The whole benchmark, on a private broker and Triton."""
    from shared.devstack.broker import start_broker, stop_broker
    from shared.devstack.triton import start_triton, stop_triton

    result: dict[str, Any] = {"machine": machine(), "n": n, "batch_size": batch_size, "max_inflight": max_inflight}
    base = Settings()
    state = Path(tempfile.mkdtemp(prefix="tagloop-bench-tagger-"))
    latency_n = n
    listings = distinct_listings(base.data_dir.resolve(), WARMUP + n + latency_n)
    warm, timed, paced = listings[:WARMUP], listings[WARMUP : WARMUP + n], listings[WARMUP + n :]
    texts = [lst.tagged_text() for lst in timed]
    bootstrap = start_broker(state, name="bench-broker")
    tagger: _Tagger | None = None
    try:
        endpoints = start_triton(state, REPO_ROOT / "triton_models", [ENCODER], name="bench-triton")
        suffix = uuid.uuid4().hex[:8]
        topics = TopicSettings(listings=f"bl-{suffix}", tags=f"bt-{suffix}", feedback=f"bf-{suffix}",
                               dead_letter=f"bd-{suffix}", user_affinity=f"bu-{suffix}")
        s = base.model_copy(update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
            "triton": base.triton.model_copy(update={"http_url": endpoints.http_url,
                                                     "grpc_url": endpoints.grpc_url}),
            "topics": topics, "data_dir": base.data_dir.resolve(), "state_dir": base.state_dir.resolve(),
        })
        create_topics(s.kafka, topic_specs(topics))

        # One batch through Triton, sequential, nothing else running.
        lat, zero_shot = asyncio.run(_batch_latencies(s, texts, batch_size, n_batches=30))
        batch_p50 = statistics.median(lat)
        result["batch_p50_s"] = round(batch_p50, 4)
        result["batch_items_per_s"] = round(batch_size / batch_p50, 1)

        # The same texts in-process (Triton idle); again after the pipeline, since a shared
        # machine's load drifts: the ratio uses the mean of the two.
        bare_before = bare_throughput(texts, batch_size, zero_shot)["bare_items_per_s"]

        # The pipeline at its maximum rate: warm up, then a burst of n listings.
        tagger = _Tagger(s, state, batch_size, max_inflight)
        tagger.start()
        reader = _TagReader(s)
        try:
            _produce(s, warm, None)
            reader.wait_for({lst.event_id for lst in warm}, 300)
            started = min(_produce(s, timed, None).values())
            reader.wait_for({lst.event_id for lst in timed}, 1800)
            finished = max(reader.seen[lst.event_id] for lst in timed)
            pipeline = n / (finished - started)
            result["pipeline_items_per_s"] = round(pipeline, 1)

            # End-to-end latency at about half of that rate.
            rate = pipeline / 2
            m = max(50, min(len(paced), int(rate * 30)))
            chosen = paced[:m]
            before = tagger.metrics()
            sent = _produce(s, chosen, rate)
            reader.wait_for({lst.event_id for lst in chosen}, 600)
            metrics = tagger.metrics()
        finally:
            reader.close()
        tagger.stop()
        tagger = None
        bare_after = bare_throughput(texts, batch_size, zero_shot)["bare_items_per_s"]
        bare = (bare_before + bare_after) / 2
        result["bare_items_per_s"] = round(bare, 1)
        result["bare_items_per_s_before_after"] = [round(bare_before, 1), round(bare_after, 1)]
        result["ratio"] = round(pipeline / bare, 3)
        # Send time (the listing's ts) to the tag record's timestamp (when the tagger produced it).
        e2e = [reader.seen[eid] - sent_at for eid, sent_at in sent.items()]
        result["latency_rate_items_per_s"] = round(rate, 1)
        result["latency_n"] = m
        result["e2e_p50_s"] = round(percentile(e2e, 0.50), 4)
        result["e2e_p99_s"] = round(percentile(e2e, 0.99), 4)
        result["p99_over_batch_p50"] = round(result["e2e_p99_s"] / batch_p50, 2)
        # What the batches formed at that rate looked like inside the tagger (from its /metrics).
        calls = metrics["tagloop_tagger_triton_latency_seconds_count"] - before[
            "tagloop_tagger_triton_latency_seconds_count"]
        if calls:
            delta = {k: metrics[k] - before.get(k, 0.0) for k in metrics}
            result["latency_run_mean_batch"] = round(
                delta["tagloop_tagger_batch_size_sum"] / delta["tagloop_tagger_batch_size_count"], 1)
            result["latency_run_mean_batch_s"] = round(delta["tagloop_tagger_triton_latency_seconds_sum"] / calls, 4)
            result["p99_over_latency_run_batch_mean"] = round(
                result["e2e_p99_s"] / result["latency_run_mean_batch_s"], 2)
        result["goal_ratio_ge_0_90"] = result["ratio"] >= 0.90
        result["goal_p99_over_batch_p50_le_3"] = result["p99_over_batch_p50"] <= 3
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if tagger is not None:
            tagger.stop()
        stop_triton(state, name="bench-triton")
        stop_broker(state, name="bench-broker")
    return result


if __name__ == "__main__":
    print(json.dumps(run_bench(), indent=2))
