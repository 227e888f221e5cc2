"""Session fixtures: the real local stack (tansu broker, Postgres, Triton), started by the project.

Nothing here is a mock: ``stack`` starts the same processes as ``tagloop dev up``
in a private state directory and stops them (by pid) at the end of the session.
Each test that needs Kafka topics gets its own uniquely named set (``topics``),
so tests never see each other's records.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devstack import broker, postgres, stack
from shared.devstack.triton import TritonEndpoints
from shared.kafka import create_topics, topic_specs
from shared.settings import Settings, TopicSettings
from tests.support import with_triton

pytest_plugins = ["tests.fixtures_triton"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TAGLOOP_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "flipkart").exists():
        pytest.skip(f"team data folder not found at {DATA_DIR} (set TAGLOOP_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tagloop-state")


@pytest.fixture(scope="session")
def kafka_bootstrap(state_dir: Path) -> Iterator[str]:
    """A real tansu broker on a free loopback port for the whole session."""
    bootstrap = broker.start_broker(state_dir)
    yield bootstrap
    broker.stop_broker(state_dir)


@pytest.fixture(scope="session")
def postgres_server_url(state_dir: Path) -> Iterator[str]:
    """The configured Postgres if reachable (127.0.0.1:5432 here), else an embedded one."""
    configured = Settings().database_url
    if postgres.postgres_ready(configured):
        yield configured
        return
    url = postgres.start_embedded_postgres(state_dir)
    yield url
    postgres.stop_postgres(state_dir)


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"tagloop_test_{uuid.uuid4().hex[:8]}"
    url = stack.ensure_database(postgres_server_url, name)
    yield url
    stack.drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
def base_settings(state_dir: Path, kafka_bootstrap: str, database_url: str, data_dir: Path) -> Settings:
    """Settings pointing at the session's broker and database (no Triton)."""
    return Settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        database_url=database_url,
        state_dir=state_dir,
        data_dir=data_dir,
        triton_model_repository=REPO_ROOT / "triton_models",
    )


@pytest.fixture
def topics(base_settings: Settings) -> TopicSettings:
    """Uniquely named topics for one test, created on the real broker."""
    names = base_settings.topics.suffixed(uuid.uuid4().hex[:8])
    create_topics(base_settings.kafka, topic_specs(names))
    return names


@pytest.fixture
def settings(base_settings: Settings, topics: TopicSettings) -> Settings:
    """Per-test settings: the session stack plus this test's own topics."""
    return base_settings.model_copy(update={"topics": topics})


@pytest.fixture
def stack_settings(settings: Settings, triton_encoder: TritonEndpoints) -> Settings:
    """Per-test settings plus the session's real Triton (minilm_encoder loaded)."""
    return with_triton(settings, triton_encoder)
