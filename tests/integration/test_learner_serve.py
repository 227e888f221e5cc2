"""The real `tagloop learner run --serve` and `tagloop learner serve` commands, over HTTP.

Both run as subprocesses on the session's broker and Postgres: the learner learns the
events fed to it while it runs and its in-process API answers from the live model;
SIGTERM stops it cleanly after a final checkpoint of everything it learned; the
separate `serve` process then answers exactly the same from that checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.learner.checkpoint import PostgresCheckpoints
from shared.devstack.process import free_port
from shared.events import FeedbackType
from shared.settings import Settings
from tests.integration.test_learner_support import (
    feedback,
    learner_env,
    produce_feedback,
    produce_tags,
    wait_for,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LISTINGS = {"l1": ["shoes", "red"], "l2": ["pots"]}
ROUNDS = 30
EVENTS = 4 * ROUNDS + 2


def _events() -> list[Any]:
    """Alice buys l1 and ignores l2, Bob clicks l2 and ignores l1 (1 s apart in event time)."""
    out = []
    for i in range(ROUNDS):
        out += [
            feedback(4 * i, "alice", "l1", FeedbackType.PURCHASE),
            feedback(4 * i + 1, "bob", "l2", FeedbackType.CLICK),
            feedback(4 * i + 2, "alice", "l2", FeedbackType.IMPRESSION),
            feedback(4 * i + 3, "bob", "l1", FeedbackType.IMPRESSION),
        ]
    # Impressions become negatives when event time has moved past their window, and the
    # two users' partitions may be read in any order: a later event of each user (a
    # merchant judgement, learned as nothing) closes every window.
    return out + [feedback(10_000 + i, user, "l1", FeedbackType.TAG_ACCEPT) for i, user in enumerate(["alice", "bob"])]


class Command:
    """One `tagloop` subprocess with its log, and the HTTP API it serves."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.port = free_port()
        self.log = log
        env = env | {"TAGLOOP_LEARNER__HTTP_PORT": str(self.port), "TAGLOOP_LEARNER__API_TOKEN": TOKEN}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "learner", *args],
                env=env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def get(self, path: str, auth: bool = True, **params: Any) -> Any:
        resp = self.http.get(path, params=params, headers=AUTH if auth else None)
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
        return resp.json()

    def stats(self) -> dict[str, Any] | None:
        """The served model's counters, or None while the API or its model is not up yet."""
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}; see {self.log}"
        try:
            resp = self.http.get("/v1/stats", headers=AUTH)
        except httpx.TransportError:
            return None
        return resp.json() if resp.status_code == 200 else None

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit status (SIGKILL and fail if it does not stop in time)."""
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"did not stop within {timeout_s}s of SIGTERM; see {self.log}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def commands() -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for command in started:  # whatever a failed test left running
        command.kill()


def _answers(api: Command) -> dict[str, Any]:
    """What the recommendation service would read; equal answers mean equal models."""
    return {
        "alice": api.get("/v1/users/alice/tags", k=3),
        "bob": api.get("/v1/users/bob/tags", k=3),
        "pair": api.get("/v1/users/alice/tags/shoes"),
        "pots_users": api.get("/v1/tags/pots/users", k=2),
        "stats": api.get("/v1/stats"),
    }


def test_learner_run_and_serve_commands_over_http(
    settings: Settings, tmp_path: Path, commands: list[Command]
) -> None:
    name = f"serve-{uuid.uuid4().hex[:6]}"
    repo = PostgresCheckpoints(settings.database_url, name)
    env = learner_env(settings, name, tmp_path) | {
        # A short window: each ignored impression is a negative before the next round.
        "TAGLOOP_LEARNER__IMPRESSION_WINDOW_S": "0.5",
        "TAGLOOP_LEARNER__REFRESH_INTERVAL_S": "0.5",
        # No checkpoint while running: the one the test finds is the one SIGTERM wrote.
        "TAGLOOP_LEARNER__CHECKPOINT_EVERY": "1000000",
        "TAGLOOP_LEARNER__CHECKPOINT_INTERVAL_S": "3600",
    }

    learner = Command(["run", "--serve"], env, tmp_path / "run.log")
    commands.append(learner)
    assert wait_for(learner.stats, 120, "the learner's API")["events_seen"] == 0

    # Fed while it runs: the live model must learn them. (Tags first: events of a listing
    # whose tags are unknown are accepted but wait, and would not be learned yet.)
    produce_tags(settings, LISTINGS)
    wait_for(lambda: (learner.stats() or {}).get("listings") == len(LISTINGS), 60, "the listings' tags")
    produce_feedback(settings, _events())

    def all_learned() -> bool:
        stats = learner.stats() or {}
        waiting = (stats.get("waiting_for_tags"), stats.get("pending_impressions"))
        return stats.get("events_seen") == EVENTS and waiting == (0, 0)

    wait_for(all_learned, 60, f"{EVENTS} events learned")

    # Bearer auth on every route but the health check.
    assert learner.get("/healthz", auth=False) == {"status": "ok", "model_loaded": True}
    for path in ("/v1/users/alice/tags", "/v1/users/alice/tags/shoes", "/v1/tags/pots/users", "/v1/stats"):
        assert learner.http.get(path).status_code == 401
        assert learner.http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401

    # What was learned: each user's engagements rank first, and the tags' top users follow.
    live = _answers(learner)
    assert [t["tag_id"] for t in live["alice"]["tags"]][:2] in (["shoes", "red"], ["red", "shoes"])
    assert live["bob"]["tags"][0]["tag_id"] == "pots" and live["bob"]["known_user"]
    assert live["pair"]["known_user"] and live["pair"]["known_tag"]
    assert live["pair"]["score"] > learner.get("/v1/users/alice/tags/pots")["score"]
    assert learner.get("/v1/users/bob/tags/pots")["score"] > learner.get("/v1/users/bob/tags/shoes")["score"]
    assert [u["user_id"] for u in live["pots_users"]["users"]] == ["bob", "alice"]
    assert learner.get("/v1/tags/shoes/users", k=1)["users"][0]["user_id"] == "alice"
    assert live["stats"]["positives"] == ROUNDS * (2 + 1) and live["stats"]["negatives"] == ROUNDS * (1 + 2)

    # Predictions, also for users and tags never seen, leave the live model as it was.
    for _ in range(3):
        assert learner.get("/v1/users/stranger/tags/new-tag")["known_user"] is False
        learner.get("/v1/users/stranger/tags", k=5)
        learner.get("/v1/users/alice/tags/new-tag")
        learner.get("/v1/tags/new-tag/users")
    assert _answers(learner) == live

    # SIGTERM: the learner stops cleanly after a final checkpoint of everything it learned.
    assert repo.latest_id() is None
    assert learner.terminate() == 0, f"see {learner.log}"
    final = repo.latest()
    assert final is not None and final.model.counters.events_seen == EVENTS
    assert sum(final.offsets[settings.topics.feedback].values()) == EVENTS
    assert final.model.score("alice", "shoes") == live["pair"]["score"]

    # `serve` loads that checkpoint and answers exactly as the live model did.
    server = Command(["serve"], env, tmp_path / "serve.log")
    commands.append(server)
    wait_for(server.stats, 120, "serve to load the checkpoint")
    assert server.http.get("/v1/users/alice/tags").status_code == 401
    assert _answers(server) == live
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit status -15).
    assert server.terminate() in (0, -signal.SIGTERM), f"see {server.log}"
