"""HTTP API of the learner (FastAPI): top tags of a user, score of a pair, top users of a tag.

Every route but ``/healthz``, ``/readyz`` and ``/metrics`` needs ``Authorization: Bearer
<token>``. Reads never mutate the model: they go through a :class:`ModelView`, which is
either the live model behind the learner's lock (``tagloop learner run --serve``) or the
latest Postgres checkpoint, reloaded when a newer one appears (``tagloop learner serve``).

Health: ``/healthz`` (liveness) answers 200 while the process serves; ``/readyz`` answers
503 until a model is loaded. Both say ``ok`` or ``degraded`` with the reasons (checkpoint
writes failing, dead letters undelivered; see :mod:`services.learner.health`). Degraded
stays ready: the live model still answers correctly, only its durability is at risk,
and the one learner instance must not drop out of serving (or be restarted, losing
what it learned since its last checkpoint) because Postgres refuses writes.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from services.learner.checkpoint import PostgresCheckpoints
from services.learner.health import LearnerHealth
from services.learner.model import AffinityModel

log = logging.getLogger(__name__)

MAX_K = 1000
# Module level: route signatures are resolved from module globals (postponed annotations).
_bearer = HTTPBearer(auto_error=False)


class ModelView(Protocol):
    """Read access to a model; the context holds whatever lock keeps it consistent."""

    def read(self) -> AbstractContextManager[AffinityModel | None]: ...


class LockedView:
    """The live model of an in-process learner, read under its lock."""

    def __init__(self, lock: threading.Lock, get: Callable[[], AffinityModel | None]):
        self._lock = lock
        self._get = get

    @contextlib.contextmanager
    def read(self) -> Iterator[AffinityModel | None]:
        with self._lock:
            yield self._get()


class CheckpointView:
    """The newest checkpoint of a learner, swapped in whole when a newer one is saved."""

    def __init__(self, repo: PostgresCheckpoints):
        self.repo = repo
        self._model: AffinityModel | None = None
        self._id: int | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load the latest checkpoint if it is newer than the one served; True if swapped."""
        latest = self.repo.latest_id()
        if latest is None or latest == self._id:
            return False
        cp = self.repo.latest()
        if cp is None:
            return False
        with self._lock:
            self._model, self._id = cp.model, cp.id
        return True

    def run_refresher(self, stop: threading.Event, interval_s: float) -> threading.Thread:
        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # a Postgres hiccup must not kill serving the last good model
                    log.exception("checkpoint refresh failed")

        thread = threading.Thread(target=loop, name="checkpoint-refresh", daemon=True)
        thread.start()
        return thread

    @contextlib.contextmanager
    def read(self) -> Iterator[AffinityModel | None]:
        with self._lock:
            model = self._model
        # Nothing ever learns on a loaded checkpoint, so no lock is needed while reading it.
        yield model


class TagScore(BaseModel):
    tag_id: str
    score: float


class UserScore(BaseModel):
    user_id: str
    score: float


class UserTopTags(BaseModel):
    user_id: str
    known_user: bool
    model_name: str
    events_seen: int
    tags: list[TagScore]


class PairScore(BaseModel):
    user_id: str
    tag_id: str
    known_user: bool
    known_tag: bool
    score: float


class TagTopUsers(BaseModel):
    tag_id: str
    known_tag: bool
    users: list[UserScore]


class Health(BaseModel):
    status: str  # "ok" or "degraded"
    model_loaded: bool
    reasons: list[str] | None = None  # why it is degraded (absent when ok)


def create_app(
    view: ModelView, token: str, title: str = "tagloop learner", health: LearnerHealth | None = None
) -> FastAPI:
    """The FastAPI app over ``view``; requests must carry ``Bearer <token>`` (an empty token rejects all).

    ``health`` is what the running learner reports (``tagloop learner run --serve``): its
    status goes into ``/healthz`` and ``/readyz``, its metrics to ``/metrics``.
    """
    app = FastAPI(
        title=title,
        version="1",
        description="Online user×tag affinity learned from the feedback stream (river).",
    )

    def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        ok = (
            credentials is not None
            and credentials.scheme.lower() == "bearer"
            and bool(token)
            and hmac.compare_digest(credentials.credentials.encode(), token.encode())
        )
        if not ok:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @contextlib.contextmanager
    def model() -> Iterator[AffinityModel]:
        with view.read() as m:
            if m is None:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model yet")
            yield m

    auth = [Depends(authorize)]
    # Documented on every private route: clients generated from the OpenAPI expect them.
    private: dict[int | str, dict[str, Any]] = {
        401: {"description": "Missing or invalid bearer token"},
        503: {"description": "No model loaded yet"},
    }
    k_query = Query(10, ge=1, le=MAX_K, description="How many results")

    def current() -> Health:
        state, reasons = health.status() if health is not None else ("ok", [])
        with view.read() as m:
            return Health(status=state, model_loaded=m is not None, reasons=reasons or None)

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["ops"])
    def healthz() -> Health:
        """Liveness: 200 while the process serves; ``status`` is ``ok`` or ``degraded`` (with ``reasons``)."""
        return current()

    @app.get(
        "/readyz", response_model=Health, response_model_exclude_none=True, tags=["ops"],
        responses={503: {"model": Health, "description": "No model loaded yet"}},
    )
    def readyz(response: Response) -> Health:
        """Readiness: 503 until a model is loaded; degraded is still ready (see the module notes)."""
        body = current()
        if not body.model_loaded:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return body

    if health is not None:

        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return Response(health.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get(
        "/v1/users/{user_id}/tags", response_model=UserTopTags, dependencies=auth, tags=["affinity"],
        responses=private,
    )
    def user_top_tags(user_id: str, k: int = k_query) -> UserTopTags:
        """The ``k`` tags the user most likely engages with (a tag prior for unseen users)."""
        with model() as m:
            top = m.top_tags(user_id, k)
            return UserTopTags(
                user_id=user_id,
                known_user=user_id in m.users,
                model_name=m.name,
                events_seen=m.counters.events_seen,
                tags=[TagScore(tag_id=t, score=s) for t, s in top],
            )

    @app.get(
        "/v1/users/{user_id}/tags/{tag_id}", response_model=PairScore, dependencies=auth, tags=["affinity"],
        responses=private,
    )
    def pair_score(user_id: str, tag_id: str) -> PairScore:
        """P(engagement | user, tag)."""
        with model() as m:
            return PairScore(
                user_id=user_id,
                tag_id=tag_id,
                known_user=user_id in m.users,
                known_tag=tag_id in m.tags,
                score=m.score(user_id, tag_id),
            )

    @app.get(
        "/v1/tags/{tag_id}/users", response_model=TagTopUsers, dependencies=auth, tags=["affinity"],
        responses=private,
    )
    def tag_top_users(tag_id: str, k: int = k_query) -> TagTopUsers:
        """The ``k`` known users most likely to engage with the tag."""
        with model() as m:
            top = m.top_users(tag_id, k) if tag_id in m.tags else []
            return TagTopUsers(
                tag_id=tag_id,
                known_tag=tag_id in m.tags,
                users=[UserScore(user_id=u, score=s) for u, s in top],
            )

    @app.get(
        "/v1/stats", dependencies=auth, tags=["ops"],
        responses=private,
    )
    def stats() -> dict[str, Any]:
        """Counters of the served model (events seen, duplicates, positives, negatives...)."""
        with model() as m:
            return m.stats()

    return app


class _NoModel:
    @contextlib.contextmanager
    def read(self) -> Iterator[AffinityModel | None]:
        yield None


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI document of the API, as published in ``schemas/learner-openapi.json``."""
    return create_app(_NoModel(), token="unused").openapi()
