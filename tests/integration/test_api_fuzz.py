"""Hostile requests to every HTTP API (issue 9): no 5xx, answers as documented, auth on every private route.

* The learner API (FastAPI) over a real Postgres checkpoint of a learned model, fuzzed by
  schemathesis from its own OpenAPI document: valid and invalid requests, with the token
  and without it (schemathesis drops or garbles the bearer it was given), every answer
  checked by schemathesis' default checks (no server error; status code, content type,
  headers and body as documented; invalid requests rejected; auth not ignored).
* Every route but the public health and metrics ones, found in the OpenAPI document and in
  the app's router, refuses a request without the token or with a wrong one.
* The tagger's small ``/metrics`` ``/healthz`` ``/readyz`` server (no OpenAPI) gets raw
  hostile requests over a socket and keeps answering.
"""

from __future__ import annotations

import contextlib
import re
import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from services.learner.api import CheckpointView, create_app
from services.learner.checkpoint import Checkpoint, PostgresCheckpoints
from services.learner.health import LearnerHealth
from services.learner.model import AffinityModel
from services.tagger.metrics import HealthServer, TaggerMetrics
from tests.integration.test_learner_api import _model

TOKEN = "fuzz-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PUBLIC = {"/healthz", "/readyz", "/metrics"}  # by design (services/learner/api.py): probes and scrapes


class BoundCheckpoint:
    """A :class:`CheckpointView` bound after import: the app (and its schema) exist before Postgres does."""

    def __init__(self) -> None:
        self.view: CheckpointView | None = None

    @contextlib.contextmanager
    def read(self) -> Iterator[AffinityModel | None]:
        assert self.view is not None, "use the learner_app fixture: it binds the checkpoint"
        with self.view.read() as model:
            yield model


SERVED = BoundCheckpoint()
APP = create_app(SERVED, TOKEN, health=LearnerHealth())
# Built here, not in a fixture: schemathesis.pytest.from_fixture's lazy loader sets
# ``request.node._nodeid``, which pytest 9 no longer has (schemathesis 4.32.5).
# The token goes to the scheme the document declares, so schemathesis also knows which
# header to drop or garble in its negative cases.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", APP,
    config=schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}}}),
)


@pytest.fixture(scope="module")
def learner_app(database_url: str) -> Iterator[FastAPI]:
    """The learner API serving a learned model from its latest checkpoint in the real Postgres."""
    repo = PostgresCheckpoints(database_url, f"api-fuzz-{uuid.uuid4().hex[:6]}")
    repo.migrate()
    repo.save(Checkpoint(model=_model(), offsets={"feedback": {0: 120}}))
    view = CheckpointView(repo)
    assert view.refresh() is True
    SERVED.view = view
    yield APP
    SERVED.view = None


@pytest.mark.integration
@schema.parametrize()
@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_learner_api_answers_every_request_as_documented(case: schemathesis.Case, learner_app: FastAPI) -> None:
    case.call_and_validate()


def _routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route: those in the OpenAPI document and those hidden from it."""
    documented = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    routed = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods if m != "HEAD"}
    return documented | routed


BAD_AUTH: list[dict[str, str | bytes]] = [
    {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Token {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN} {TOKEN}"},
    {"Authorization": b"Bearer \xff\xfe" + TOKEN.encode()}, {"Authorization": "Bearer " + "A" * 20_000},
    {"X-Authorization": f"Bearer {TOKEN}"}, {"Cookie": f"Authorization=Bearer {TOKEN}"},
]


@pytest.mark.integration
def test_every_private_route_refuses_a_missing_or_wrong_token(learner_app: FastAPI) -> None:
    routes = _routes(learner_app)
    private = sorted((m, p) for m, p in routes if p not in PUBLIC)
    assert {p for _, p in private} >= {"/v1/users/{user_id}/tags", "/v1/stats"}, private
    document = learner_app.openapi()
    client = TestClient(learner_app)
    for method, path in private:
        if path in document["paths"]:  # documented as needing the bearer
            assert document["paths"][path][method.lower()].get("security"), f"{method} {path} documents no security"
        url = re.sub(r"\{[^}]+\}", "alice", path)
        assert client.request(method, url, headers=AUTH).status_code == 200, f"{method} {url} with the token"
        for headers in BAD_AUTH:
            answer = client.request(method, url, headers=headers)
            assert answer.status_code in (401, 403), f"{method} {url} {headers!r}: {answer.status_code}"
    for path in PUBLIC:
        assert client.get(path).status_code == 200, path


# ------------------------------------------------------------------ the tagger's health server

HOSTILE_REQUESTS = [
    b"", b"GARBAGE\r\n\r\n", b"\x00\xff\xfe\r\n\r\n", b"GET /readyz HTTP/1.1\r\n",
    b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"BREW /healthz HTTP/1.1\r\n\r\n", b"DELETE /readyz HTTP/1.1\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /%00%ff/../../etc/passwd HTTP/1.1\r\n\r\n", b"GET \xff\xfe HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: \xff\x00\r\n\r\n",
    b"GET /metrics?x=" + b"%" * 5000 + b" HTTP/1.1\r\n\r\n", b"GET http://evil/healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz\r\n\r\n", b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /healthz HTTP/1.1\r\nConnection: keep-alive\r\n\r\n" * 50,
]


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is, close our side, read whatever comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def tagger_http() -> Iterator[HealthServer]:
    """One server for every hostile request below, one after the other."""
    server = HealthServer(TaggerMetrics(), lambda: True, "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("request_bytes", HOSTILE_REQUESTS, ids=range(len(HOSTILE_REQUESTS)))
def test_tagger_health_server_survives_hostile_requests(tagger_http: HealthServer, request_bytes: bytes) -> None:
    # A connection left half-open must not stop other requests from being answered.
    with socket.create_connection(("127.0.0.1", tagger_http.port), timeout=10) as stalled:
        stalled.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        answer = _raw_exchange(tagger_http.port, request_bytes)
        status = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        assert status is None or int(status.group(1)) != 500, answer[:300]
        base = f"http://127.0.0.1:{tagger_http.port}"
        assert httpx.get(f"{base}/healthz", timeout=10).text == "ok\n"
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        assert "tagloop_tagger_events_consumed" in httpx.get(f"{base}/metrics", timeout=10).text
