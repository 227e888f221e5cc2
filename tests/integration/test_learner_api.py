"""The learner HTTP API over a real Postgres checkpoint: auth, routes, no mutation, published OpenAPI."""

from __future__ import annotations

import json
import pickle
import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.learner.api import CheckpointView, LockedView, create_app, openapi_schema
from services.learner.checkpoint import Checkpoint, PostgresCheckpoints
from services.learner.main import new_model
from services.learner.model import AffinityModel
from services.learner.settings import LearnerSettings
from shared.events import FeedbackType
from tests.integration.test_learner_support import feedback

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _model() -> AffinityModel:
    # A short impression window: each ignored impression is its own negative before the next one.
    model = new_model(LearnerSettings(impression_window_s=0.5))
    model.set_listing_tags("l1", [("shoes", 0.9), ("red", 0.8)])
    model.set_listing_tags("l2", [("pots", 0.9)])
    for i in range(30):
        model.learn(feedback(4 * i, "alice", "l1", FeedbackType.PURCHASE))
        model.learn(feedback(4 * i + 1, "bob", "l2", FeedbackType.CLICK))
        # What each saw and ignored: the negatives that make the two users differ.
        model.learn(feedback(4 * i + 2, "alice", "l2", FeedbackType.IMPRESSION))
        model.learn(feedback(4 * i + 3, "bob", "l1", FeedbackType.IMPRESSION))
    model.flush()
    return model


@pytest.fixture
def client(database_url: str) -> TestClient:
    repo = PostgresCheckpoints(database_url, f"api-{uuid.uuid4().hex[:6]}")
    repo.migrate()
    view = CheckpointView(repo)
    assert view.refresh() is False  # nothing saved yet
    repo.save(Checkpoint(model=_model(), offsets={"feedback": {0: 120}}))
    assert view.refresh() is True
    return TestClient(create_app(view, TOKEN))


@pytest.mark.integration
def test_requires_bearer_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model_loaded": True}
    assert client.get("/v1/users/alice/tags").status_code == 401
    bad = client.get("/v1/users/alice/tags", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/users/alice/tags", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


@pytest.mark.integration
def test_routes_answer_from_the_checkpoint(client: TestClient) -> None:
    top = client.get("/v1/users/bob/tags", params={"k": 1}, headers=AUTH).json()
    assert top["known_user"] is True and top["tags"][0]["tag_id"] == "pots"
    assert top["events_seen"] == 120 and top["model_name"] == "river-lr"
    pair = client.get("/v1/users/alice/tags/shoes", headers=AUTH).json()
    assert pair["known_user"] and pair["known_tag"] and 0.5 < pair["score"] <= 1.0
    users = client.get("/v1/tags/pots/users", params={"k": 2}, headers=AUTH).json()
    assert users["users"][0]["user_id"] == "bob"
    unknown = client.get("/v1/users/nobody/tags", headers=AUTH).json()
    assert unknown["known_user"] is False and {t["tag_id"] for t in unknown["tags"]} == {
        "shoes",
        "red",
        "pots",
    }
    assert client.get("/v1/tags/none/users", headers=AUTH).json() == {
        "tag_id": "none",
        "known_tag": False,
        "users": [],
    }
    assert client.get("/v1/users/bob/tags", params={"k": 0}, headers=AUTH).status_code == 422
    assert client.get("/v1/stats", headers=AUTH).json()["events_seen"] == 120


def test_reads_do_not_mutate_the_live_model() -> None:
    model = _model()
    lock = threading.Lock()
    api = TestClient(create_app(LockedView(lock, lambda: model), TOKEN))
    before = pickle.dumps(model)
    for path in ("/v1/users/alice/tags", "/v1/users/zed/tags/new-tag", "/v1/tags/shoes/users", "/v1/stats"):
        assert api.get(path, headers=AUTH).status_code == 200
    assert pickle.dumps(model) == before


def test_no_model_yet_is_503() -> None:
    api = TestClient(create_app(LockedView(threading.Lock(), lambda: None), TOKEN))
    assert api.get("/v1/users/a/tags", headers=AUTH).status_code == 503


def test_empty_token_rejects_everything() -> None:
    api = TestClient(create_app(LockedView(threading.Lock(), _model), ""))
    assert api.get("/v1/users/a/tags", headers={"Authorization": "Bearer "}).status_code == 401


def test_published_openapi_is_current() -> None:
    published = json.loads((REPO_ROOT / "schemas" / "learner-openapi.json").read_text())
    assert published == json.loads(json.dumps(openapi_schema())), "run `tagloop learner openapi`"
