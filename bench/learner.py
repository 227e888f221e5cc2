"""Learner benchmark: ``tagloop bench learner --json``.

Two numbers, measured in one run:

* **updates/s** of the pure model (no Kafka), for the hashed LR and the FM, on a
  synthetic stream of (user, listing) events with 3 tags per listing;
* **lag** of the real learner loop (its own process, real broker, checkpoints to
  real Postgres) behind the ``feedback`` topic while a producer writes at a fixed
  rate. Lag of an event = when the learner has learned it − when it was produced
  (the record's CreateTime), as percentiles over events (and over batches, from each
  batch's oldest event), plus how long the learner needed to drain after the producer
  stopped; the learner is stopped only once it has learned everything (or after a bound).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Message, Producer

from services.learner.features import ModelKind
from services.learner.main import run
from services.learner.model import AffinityModel, UserTagClassifier
from services.learner.settings import LearnerSettings
from shared.events import FeedbackEvent, FeedbackType, Tag, TagEvent, TagKind, TagSource, encode
from shared.kafka import create_topics, producer_config, topic_specs
from shared.settings import Settings

N_USERS = 20_000
N_LISTINGS = 5_000
N_TAGS = 500
TAGS_PER_LISTING = 3
# Event mix of a storefront: mostly impressions, a few engagements.
MIX = [
    (FeedbackType.IMPRESSION, 0.70),
    (FeedbackType.CLICK, 0.20),
    (FeedbackType.ADD_TO_CART, 0.07),
    (FeedbackType.PURCHASE, 0.03),
]


def _listing_tags(rng: random.Random) -> dict[str, list[str]]:
    tags = [f"t{j}" for j in range(N_TAGS)]
    return {f"l{i}": rng.sample(tags, TAGS_PER_LISTING) for i in range(N_LISTINGS)}


def _events(n: int, rng: random.Random, prefix: str = "e", rate: float = 10_000.0) -> list[FeedbackEvent]:
    """``n`` events with event times spaced as if produced at ``rate`` (impression windows close)."""
    kinds, weights = zip(*MIX, strict=True)
    now = datetime.now(UTC)
    return [
        FeedbackEvent(
            event_id=f"{prefix}{i}",
            user_id=f"u{rng.randrange(N_USERS)}",
            listing_id=f"l{rng.randrange(N_LISTINGS)}",
            type=rng.choices(kinds, weights)[0],
            ts=now + timedelta(seconds=i / rate),
        )
        for i in range(n)
    ]


def model_throughput(kind: ModelKind, n_events: int, seed: int = 0) -> dict[str, float]:
    """Events/s and (user, tag) updates/s of the pure model on a synthetic stream."""
    rng = random.Random(seed)
    model = AffinityModel(classifier=UserTagClassifier(kind=kind), impression_window_s=0.0)
    for lid, tags in _listing_tags(rng).items():
        model.set_listing_tags(lid, [(t, 1.0) for t in tags])
    events = _events(n_events, rng)
    t0 = time.perf_counter()
    for event in events:
        model.learn(event)
    model.flush()
    elapsed = time.perf_counter() - t0
    updates = model.counters.positives + model.counters.negatives
    return {"events_per_s": round(n_events / elapsed), "updates_per_s": round(updates / elapsed)}


def _learner_child(
    settings_json: str, ls_json: str, out: str, ready: Any, stop_flag: Any, learned_count: Any
) -> None:
    """The learner process of the lag measurement: run() with a per-batch lag probe."""
    settings = Settings.model_validate_json(settings_json)
    ls = LearnerSettings.model_validate_json(ls_json)
    lags: list[float] = []  # per event: learned − produced
    batch_lags: list[float] = []  # per batch: learned − its oldest event produced
    series: list[tuple[float, int, float]] = []
    learned = [0]
    t0 = time.perf_counter()
    stop = threading.Event()

    def on_batch(msgs: list[Message]) -> None:
        ready.set()
        now_ms = time.time() * 1000
        fb = [m for m in msgs if m.topic() == settings.topics.feedback]
        if fb:
            learned[0] += len(fb)
            learned_count.value = learned[0]
            event_lags = [(now_ms - m.timestamp()[1]) / 1000 for m in fb]
            lags.extend(event_lags)
            batch_lags.append(max(event_lags))
            series.append((round(time.perf_counter() - t0, 2), len(fb), round(batch_lags[-1], 2)))
        if stop_flag.is_set():
            stop.set()

    checkpoints: list[tuple[float, int]] = []
    cpu0 = time.process_time()
    run(
        settings,
        ls,
        stop,
        on_batch=on_batch,
        on_checkpoint=lambda cp_id, stats: checkpoints.append(
            (round(time.perf_counter() - t0, 3), int(stats["events_seen"]))
        ),
    )
    Path(out).write_text(
        json.dumps(
            {
                "lags": lags,
                "batch_lags": batch_lags,
                "learned": learned[0],
                "seconds": time.perf_counter() - t0,
                "checkpoints": checkpoints,
                "series": series,
                "cpu_s": time.process_time() - cpu0,
            }
        )
    )


def lag_at_rate(
    settings: Settings, ls: LearnerSettings, rate: int, seconds: float, debug: bool = False
) -> dict[str, Any]:
    """Produce at ``rate`` events/s for ``seconds`` while the learner process consumes; measure its lag."""
    rng = random.Random(1)
    producer = Producer(producer_config(settings.kafka) | {"linger.ms": 5})
    for lid, tags in _listing_tags(rng).items():
        tag_event = TagEvent(
            listing_id=lid,
            model_name="bench",
            model_version="1",
            source_event_id=lid,
            tags=[Tag(tag_id=t, name=t, kind=TagKind.CATEGORY, score=0.9, source=TagSource.ZERO_SHOT) for t in tags],
        )
        producer.produce(settings.topics.tags, key=lid.encode(), value=encode(tag_event))
    producer.flush(30)
    total = int(rate * seconds)
    # Encoded before the clock starts: the producer must hold the rate, not the learner's CPU share.
    payloads = [
        (e.user_id.encode(), encode(e)) for e in _events(total, rng, prefix=f"b{uuid.uuid4().hex[:6]}-", rate=rate)
    ]

    ctx = mp.get_context("spawn")
    ready, stop_flag, learned_count = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "lags.json")
        child = ctx.Process(
            target=_learner_child,
            args=(settings.model_dump_json(), ls.model_dump_json(), out, ready, stop_flag, learned_count),
        )
        child.start()
        if not ready.wait(60):
            child.kill()
            raise RuntimeError("learner did not start")
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        load0, cpu0 = os.getloadavg()[0], time.process_time()
        t0 = time.perf_counter()
        for i in range(0, total, per_tick):
            for key, value in payloads[i : i + per_tick]:
                producer.produce(settings.topics.feedback, key=key, value=value)
            producer.poll(0)
            # Pace against the schedule, not the previous tick, so the rate holds on average.
            delay = t0 + (i + per_tick) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        producer.flush(30)
        produce_s = time.perf_counter() - t0
        # The producer shares the cores with the learner: its CPU says how much it takes.
        producer_cpu_s, load1 = time.process_time() - cpu0, os.getloadavg()[0]
        # Let the learner drain everything (a learner stopped early would hide its worst lags),
        # within a bound, then stop it (it writes its final checkpoint).
        drain_deadline = time.perf_counter() + max(30.0, 3 * seconds)
        while learned_count.value < total and time.perf_counter() < drain_deadline:
            time.sleep(0.05)
        drain_s = time.perf_counter() - t0 - produce_s
        stop_flag.set()
        child.join(120)
        result = json.loads(Path(out).read_text())
    lags = sorted(result["lags"])
    q = statistics.quantiles(lags, n=100, method="inclusive") if len(lags) >= 2 else lags * 100
    qb = statistics.quantiles(result["batch_lags"], n=100, method="inclusive") if len(lags) >= 2 else q
    return {
        "input_rate": rate,
        "achieved_input_rate": round(total / produce_s),
        "produced": total,
        "learned": result["learned"],
        # Per event: when it was learned − its CreateTime (set by the producer at produce()).
        "lag_p50_s": round(q[49], 3),
        "lag_p95_s": round(q[94], 3),
        "lag_p99_s": round(q[98], 3),
        "lag_max_s": round(max(lags), 3) if lags else None,
        # Per batch, from its oldest event: the definition of the first published numbers.
        "batch_lag_p50_s": round(qb[49], 3),
        "batch_lag_p99_s": round(qb[98], 3),
        "drain_s_after_producer_stopped": round(drain_s, 2),
        "batches": len(result["batch_lags"]),
        "checkpoints_written": len(result["checkpoints"]),
        # CPU the learner process used (all its threads): events per CPU-second says what
        # one dedicated core sustains, whatever else the machine was running.
        "learner_cpu_s": round(result["cpu_s"], 2),
        "learner_wall_s": round(result["seconds"], 2),
        "learner_events_per_cpu_s": round(result["learned"] / max(result["cpu_s"], 1e-9)),
        "producer_cpu_s": round(producer_cpu_s, 2),
        "load_avg_1m_before_after": [round(load0, 2), round(load1, 2)],
        "checkpoint_times": result["checkpoints"],
        "series": result["series"] if debug else None,
    }


def run_bench(
    rate: int = 10_000, seconds: float = 20.0, kind: ModelKind = "lr", settings: Settings | None = None
) -> dict[str, Any]:
    """The whole benchmark; starts a private broker unless ``settings`` points at one."""
    from shared.devstack.broker import start_broker, stop_broker
    from shared.devstack.stack import drop_database, ensure_database

    result: dict[str, Any] = {
        "throughput_lr": model_throughput("lr", 50_000),
        "throughput_lr_river": model_throughput("lr-river", 20_000),
        "throughput_fm": model_throughput("fm", 20_000),
    }
    state = Path(tempfile.mkdtemp(prefix="tagloop-bench-learner-"))
    own_broker = settings is None
    base = settings or Settings(kafka={"bootstrap_servers": start_broker(state, name="bench-broker")})
    # A throw-away database: the benchmark's checkpoints never mix with real ones.
    dbname = f"tagloop_bench_{uuid.uuid4().hex[:8]}"
    base = base.model_copy(update={"database_url": ensure_database(base.database_url, dbname)})
    server_url = settings.database_url if settings else Settings().database_url
    try:
        suffix = uuid.uuid4().hex[:8]
        topics = base.topics.suffixed(suffix)
        create_topics(base.kafka, topic_specs(topics))
        s = base.model_copy(update={"topics": topics})
        ls = LearnerSettings(name=f"bench-{suffix}", model=kind, impression_window_s=5.0)
        result["lag"] = lag_at_rate(s, ls, rate, seconds)
        result["model"] = f"river-{kind}"
        result["goal_lag_below_1s"] = result["lag"]["lag_p99_s"] < 1.0
    finally:
        drop_database(server_url, dbname)
        if own_broker:
            stop_broker(state, name="bench-broker")
    return result


if __name__ == "__main__":
    print(json.dumps(run_bench(), indent=2))
