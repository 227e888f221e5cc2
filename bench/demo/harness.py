"""The real services as processes, and the simulated shoppers around them (demo and ``eval loop``).

Both the demo and the loop experiment (``bench/loop.py``) run the same pieces: the tagger, the
feedback worker and the learner as child processes configured only by ``TAGLOOP_`` variables,
and :class:`Shoppers`, which reads ``listing-tags`` and answers each tag event with simulated
shopper and merchant feedback driven by the catalog's true labels.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from services.feedback.loadgen import OffsetRecorder, caught_up, stored_offsets, worker_env
from services.simulator.shoppers import ShopperConfig, ShopperSimulator
from shared.devstack.process import ManagedProcess, free_port
from shared.events import DeadLetter, TagEvent, decode, encode
from shared.kafka import consumer_config
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("tagger", "feedback", "learner")


def service_env(settings: Settings) -> dict[str, str]:
    """Environment that makes ``Settings()`` in a child process see this run's stack and knobs."""
    return worker_env(settings) | {
        "TAGLOOP_TRITON__GRPC_URL": settings.triton.grpc_url, "TAGLOOP_TRITON__HTTP_URL": settings.triton.http_url,
        "TAGLOOP_TOPICS__LISTINGS": settings.topics.listings,
        "TAGLOOP_TOPICS__USER_AFFINITY": settings.topics.user_affinity,
        "TAGLOOP_DATA_DIR": str(settings.data_dir),
        "TAGLOOP_TRITON_MODEL_REPOSITORY": str(settings.triton_model_repository),
        "TAGLOOP_TAGGER__ROLLOUT_REFRESH_S": str(settings.tagger.rollout_refresh_s), "PYTHONUNBUFFERED": "1",
        "TAGLOOP_TRAINER__EXPLORATION_SHARE": str(settings.trainer.exploration_share),
        "TAGLOOP_LEARNER__HTTP_PORT": str(settings.learner.http_port),
        "TAGLOOP_LEARNER__HTTP_HOST": settings.learner.http_host,
        "TAGLOOP_LEARNER__API_TOKEN": settings.learner.api_token.get_secret_value(),
    }


def service_commands(tagger_http_port: int) -> dict[str, list[str]]:
    """How each service is started: the same entry points as production."""
    return {
        "tagger": [sys.executable, "-m", "services.tagger.main", "--group-id", "demo-tagger",
                   "--http-port", str(tagger_http_port)],
        "feedback": [sys.executable, "-m", "services.feedback.main", "--engine", "batch", "--group", "demo-feedback"],
        "learner": [sys.executable, "-m", "services.cli", "learner", "run", "--serve"],
    }


FEEDBACK_GROUP = "demo-feedback"


@contextmanager
def running_services(
    settings: Settings, workdir: Path, names: Sequence[str] = SERVICES, tagger_http_port: int | None = None,
) -> Iterator[dict[str, ManagedProcess]]:
    """Start the named services as child processes; stop them (SIGTERM, then SIGKILL) on exit."""
    commands = service_commands(tagger_http_port or free_port())
    env = service_env(settings)
    procs: dict[str, ManagedProcess] = {}
    try:
        for name in names:
            procs[name] = ManagedProcess(f"{workdir.name}-{name}", workdir)
            procs[name].start(commands[name], env=env, cwd=REPO_ROOT)
        yield procs
    finally:
        for p in procs.values():
            p.stop(timeout_s=30)


class Shoppers:
    """Reads ``listing-tags`` and answers each new tag event with simulated feedback."""

    def __init__(self, settings: Settings, truth: Mapping[str, set[str]], seed: int,
                 config: ShopperConfig | None = None) -> None:
        self.settings = settings
        self.sim = ShopperSimulator(truth, config or ShopperConfig(), seed)
        self.consumer = Consumer(consumer_config(settings.kafka, f"shoppers-{uuid.uuid4().hex[:6]}"))
        topic = settings.topics.tags
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.feedback = OffsetRecorder(settings.kafka)
        self.tagged: dict[str, str] = {}  # listing → model version of its latest tags
        self.events_by_version: Counter[str] = Counter()
        self.feedback_sent = 0
        self.tags_seen = 0
        self.users: Counter[str] = Counter()  # feedback events per simulated user
        self.tag_names: dict[str, str] = {}  # tag id → name, as published
        self.last_events: list[TagEvent] = []

    def react(self, timeout_s: float = 0.5) -> int:
        """Consume what tag events arrived within ``timeout_s``; feedback for each. Returns how many."""
        n = 0
        for msg in self.consumer.consume(500, timeout_s):
            if msg.error() or msg.value() is None:
                continue
            event = decode(TagEvent, msg.value())
            n += 1
            self.tagged[event.listing_id] = event.model_version
            self.events_by_version[f"{event.model_name} v{event.model_version}"] += 1
            self.last_events = [*self.last_events[-4:], event]
            self.tags_seen += len(event.tags)
            self.tag_names.update((t.tag_id, t.name) for t in event.tags)
            for fb in self.sim.react(event):
                self.feedback.send(self.settings.topics.feedback, fb.user_id.encode(), encode(fb))
                self.feedback_sent += 1
                self.users[fb.user_id] += 1
        return n

    def react_until(self, listing_ids: set[str], timeout_s: float) -> None:
        """Consume tag events until every listing in ``listing_ids`` was tagged; feedback for each."""
        deadline = time.monotonic() + timeout_s
        while not listing_ids <= self.tagged.keys() and time.monotonic() < deadline:
            self.react()
        missing = listing_ids - self.tagged.keys()
        if missing:
            raise TimeoutError(f"{len(missing)} listings not tagged after {timeout_s:.0f}s")

    def flush(self) -> dict[tuple[str, int], int]:
        return self.feedback.flush()

    def close(self) -> None:
        """Close the consumer and let the producer go now (not at exit, when the broker may be gone)."""
        self.consumer.close()
        self.feedback.producer.flush(5)
        del self.feedback


def wait_counted(settings: Settings, group: str, targets: dict[tuple[str, int], int], timeout_s: float) -> None:
    """Until the feedback service stored offsets past every produced feedback record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if caught_up(stored_offsets(settings.database_url, group), targets):
            return
        time.sleep(0.5)
    raise TimeoutError("feedback not counted in time")


def count_dead_letters(settings: Settings, quiet_s: float = 2.0) -> Counter[str]:
    """Dead letters on the topic so far, by the service that wrote them."""
    consumer = Consumer(consumer_config(settings.kafka, f"dead-letters-{uuid.uuid4().hex[:6]}"))
    topic = settings.topics.dead_letter
    found: Counter[str] = Counter()
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        quiet = time.monotonic()
        while time.monotonic() - quiet < quiet_s:
            for msg in consumer.consume(500, 0.3):
                if not msg.error():
                    found[decode(DeadLetter, msg.value()).service] += 1
                    quiet = time.monotonic()
        return found
    finally:
        consumer.close()
