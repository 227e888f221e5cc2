"""No secret in any log line (issue 13): the services run with a Kafka SASL password, a database
password and an API token configured, and every line they print is searched for all three.

What each case shows, honestly:

* ``test_running_services_never_log_their_secrets``: the learner (with its API) and the feedback
  worker (batch engine; the faust one in the slow run) run against the session's real broker and
  Postgres and do their work. The database password is in the URL they connect with (the local
  server trusts loopback, so any password is accepted: it still travels through every connection
  string); the API token guards the requests made to the learner. The local tansu broker cannot
  authenticate SASL users (memory storage keeps no users), so Kafka runs PLAINTEXT here: the SASL
  password reaches the librdkafka configurations (``shared.kafka.client_config`` passes it
  whenever it is set) but no SASL handshake happens.
* ``test_running_tagger_never_logs_the_secrets`` (slow): the same for the tagger, tagging real
  listings through the session's Triton.
* ``test_sasl_failures_never_show_the_password``: the same services with ``SASL_PLAINTEXT``
  against that broker, which refuses the handshake: their failure output, with and without
  ``--debug``, names Kafka and never the password.
* ``test_services_retrying_sasl_never_log_the_password``: the services' own entrypoints (no CLI
  preflight) with ``SASL_PLAINTEXT``: librdkafka (learner), faust and aiokafka (feedback) each
  try the handshake, fail, log it and retry; none of those lines holds the password.
* ``test_postgres_failures_never_show_the_password``: a URL with a password on a closed port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from services.learner.checkpoint import PostgresCheckpoints
from services.simulator.listings import flipkart_records, listing_from_record, produce_listings
from shared.cli_errors import ExitCode
from shared.devstack.process import free_port
from shared.events import FeedbackEvent, FeedbackType
from shared.settings import Settings
from tests.integration.test_learner_support import produce_feedback, produce_tags, wait_for
from tests.support import read_topic

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TAGLOOP = Path(sys.executable).with_name("tagloop")
KAFKA_PASSWORD = "kafka-Sasl-Pw-7731"
DB_PASSWORD = "db-Pass-5519"
API_TOKEN = "api-Token-8842"
SECRETS = {"Kafka SASL password": KAFKA_PASSWORD, "database password": DB_PASSWORD, "API token": API_TOKEN}


def with_password(url: str, password: str) -> str:
    """``url`` (URL or conninfo form) as a ``postgresql://user:password@host:port/db`` URL."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return (f"postgresql://{info.get('user') or 'postgres'}:{password}@{info.get('host') or '127.0.0.1'}:"
            f"{info.get('port') or 5432}/{info.get('dbname') or 'postgres'}")


def secret_env(settings: Settings, tmp: Path, **kafka_security: str) -> dict[str, str]:
    """A service's environment: the test's broker, database and topics, and all three secrets."""
    t = settings.topics
    base = {k: v for k, v in os.environ.items() if not k.startswith("TAGLOOP_")}
    return base | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "TAGLOOP_STATE_DIR": str(tmp / "state"),
        "TAGLOOP_DATA_DIR": str(settings.data_dir),
        "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "TAGLOOP_KAFKA__SASL_USERNAME": "tagloop",
        "TAGLOOP_KAFKA__SASL_PASSWORD": KAFKA_PASSWORD,
        "TAGLOOP_DATABASE_URL": with_password(settings.database_url, DB_PASSWORD),
        "TAGLOOP_API_TOKEN": API_TOKEN,
        "TAGLOOP_TOPICS__LISTINGS": t.listings,
        "TAGLOOP_TOPICS__TAGS": t.tags,
        "TAGLOOP_TOPICS__FEEDBACK": t.feedback,
        "TAGLOOP_TOPICS__DEAD_LETTER": t.dead_letter,
        "TAGLOOP_TOPICS__USER_AFFINITY": t.user_affinity,
        "TAGLOOP_LEARNER__NAME": f"secrets-{uuid.uuid4().hex[:6]}",
        "TAGLOOP_LEARNER__CHECKPOINT_INTERVAL_S": "1.0",
    } | {f"TAGLOOP_KAFKA__{k.upper()}": v for k, v in kafka_security.items()}


def assert_no_secret(text: str, where: str) -> None:
    for what, secret in SECRETS.items():
        assert secret not in text, f"the {what} appears in {where}"


class Service:
    """One ``tagloop`` subprocess whose stdout and stderr both go to its log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, program: str = str(TAGLOOP)) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([program, *args], env=env, cwd=REPO_ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.text()[-3000:]}"
        return True

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM; SIGKILL if it has not stopped after ``timeout_s``. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:  # whatever a failed test left running
        service.stop()


def _feedback(ns: str, n: int) -> list[FeedbackEvent]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    kinds = [FeedbackType.PURCHASE, FeedbackType.CLICK, FeedbackType.IMPRESSION]
    return [FeedbackEvent(event_id=f"{ns}-{i}", user_id=f"{ns}-u{i % 3}", listing_id=f"{ns}-l{i % 2}",
                          type=kinds[i % 3], ts=t0 + timedelta(seconds=i)) for i in range(n)]


@pytest.mark.parametrize("engine", ["batch", pytest.param("faust", marks=pytest.mark.slow)])
def test_running_services_never_log_their_secrets(settings: Settings, tmp_path: Path, services: list[Service],
                                                  engine: str) -> None:
    ns = uuid.uuid4().hex[:8]
    env = secret_env(settings, tmp_path)
    port = free_port()
    learner = Service(["learner", "run", "--serve"], env | {"TAGLOOP_LEARNER__HTTP_PORT": str(port)},
                      tmp_path / "learner.log")
    feedback = Service(["feedback", "run", "--group", f"secrets-{ns}", "--engine", engine], env,
                       tmp_path / "feedback.log")
    services += [learner, feedback]
    produce_tags(settings, {f"{ns}-l0": ["shoes"], f"{ns}-l1": ["pots"]})
    events = _feedback(ns, 30)
    produce_feedback(settings, events)

    # The learner learned them (through Kafka) and serves them to a caller with the token only.
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def learned() -> bool:
        learner.alive()
        try:
            answer = api.get("/v1/stats", headers={"Authorization": f"Bearer {API_TOKEN}"})
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json()["events_seen"] >= len(events)

    wait_for(learned, 120, "the learner to learn the events")
    assert api.get("/v1/stats").status_code == 401
    assert api.get("/v1/users/u0/tags", headers={"Authorization": "Bearer wrong"}).status_code == 401
    api.close()
    # Both wrote to Postgres through the URL carrying the password.
    checkpoints = PostgresCheckpoints(settings.database_url, env["TAGLOOP_LEARNER__NAME"])
    wait_for(lambda: learner.alive() and checkpoints.latest_id() is not None, 60, "a learner checkpoint")

    def archived() -> bool:
        feedback.alive()
        try:
            with psycopg.connect(settings.database_url) as conn:
                row = conn.execute("SELECT count(*) FROM feedback_events WHERE event_id LIKE %s",
                                   (f"{ns}-%",)).fetchone()
        except psycopg.errors.UndefinedTable:  # not migrated yet
            return False
        return row is not None and row[0] == len(events)

    wait_for(archived, 120, "the feedback worker to archive the events")

    assert learner.stop() == 0 and feedback.stop() == 0
    for name, service in (("learner", learner), ("feedback", feedback)):
        text = service.text()
        assert len(text.splitlines()) >= 5, f"{name} logged almost nothing:\n{text}"  # the logs were captured
        assert_no_secret(text, f"the {name} log")
    assert " 401" in learner.text()  # uvicorn's access log is among what was searched


@pytest.mark.slow  # a session Triton and the tagger's label embeddings: minutes on a cold cache
def test_running_tagger_never_logs_the_secrets(stack_settings: Settings, tmp_path: Path,
                                               services: list[Service], data_dir: Path) -> None:
    settings = stack_settings
    env = secret_env(settings, tmp_path) | {
        "TAGLOOP_STATE_DIR": str(settings.state_dir),  # the shared label-embedding cache (tests/support.py)
        "TAGLOOP_TRITON__GRPC_URL": settings.triton.grpc_url,
        "TAGLOOP_TRITON__HTTP_URL": settings.triton.http_url,
    }
    tagger = Service(["tagger", "run", "--group-id", f"secrets-{uuid.uuid4().hex[:6]}"], env,
                     tmp_path / "tagger.log")
    services.append(tagger)
    records = list(flipkart_records(data_dir, 5))
    produce_listings(settings, (listing_from_record(r) for r in records))
    tagged = read_topic(settings.kafka, settings.topics.tags, expect=len(records), timeout_s=600)
    assert len(tagged) >= len(records), tagger.text()[-3000:]
    assert tagger.stop() == 0
    text = tagger.text()
    assert "model" in text  # its start-up lines (which model, which version) were captured
    assert_no_secret(text, "the tagger log")


# Every command's preflight raises the same error: the plain form once, the traceback for each.
@pytest.mark.slow  # one CLI or service process per case: the running-services test stays in the default suite
@pytest.mark.parametrize(
    ("command", "debug"),
    [(["learner", "run"], False), (["learner", "run"], True), (["feedback", "run"], True), (["tagger", "run"], True),
     (["produce", "listings", "--limit", "1"], True)],
    ids=["learner-plain", "learner-debug", "feedback-debug", "tagger-debug", "produce-debug"],
)
def test_sasl_failures_never_show_the_password(settings: Settings, tmp_path: Path, command: list[str],
                                               debug: bool) -> None:
    env = secret_env(settings, tmp_path, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512")
    result = subprocess.run([str(TAGLOOP), *(["--debug"] if debug else []), *command], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.UNREACHABLE, output
    assert f"Kafka at {settings.kafka.bootstrap_servers}" in output and "SASL" in output
    assert ("Traceback" in output) == debug, output
    assert_no_secret(output, f"`tagloop {' '.join(command)}`")


@pytest.mark.slow  # one CLI or service process per case: the running-services test stays in the default suite
@pytest.mark.parametrize(
    "module",
    [["services.learner.main"], ["services.feedback.main", "--engine", "faust"],
     ["services.feedback.main", "--engine", "batch"]],
    ids=["learner", "feedback-faust", "feedback-batch"],
)
def test_services_retrying_sasl_never_log_the_password(settings: Settings, tmp_path: Path, services: list[Service],
                                                       module: list[str]) -> None:
    """The service entrypoints themselves (no CLI preflight): their own clients try SASL and fail, and log it."""
    env = secret_env(settings, tmp_path, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512")
    service = Service(["-m", *module], env, tmp_path / "service.log", program=sys.executable)
    services.append(service)
    # librdkafka's or aiokafka's own report of the refused handshake: the SASL settings were used.
    wait_for(lambda: "sasl" in service.text().lower(), 60, "a SASL failure in the log")
    service.stop(timeout_s=5)  # a consumer that never joined may linger on close: its log is what matters
    assert_no_secret(service.text(), f"the log of {' '.join(module)}")


@pytest.mark.slow  # one CLI or service process per case: the running-services test stays in the default suite
@pytest.mark.parametrize(
    ("command", "debug"),
    [(["learner", "serve"], False), (["learner", "serve"], True), (["db", "migrate"], True)],
    ids=["serve-plain", "serve-debug", "migrate-debug"],
)
def test_postgres_failures_never_show_the_password(settings: Settings, tmp_path: Path, command: list[str],
                                                   debug: bool) -> None:
    env = secret_env(settings, tmp_path) | {
        "TAGLOOP_DATABASE_URL": f"postgresql://tagloop:{DB_PASSWORD}@127.0.0.1:{free_port()}/tagloop"}
    result = subprocess.run([str(TAGLOOP), *(["--debug"] if debug else []), *command], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.UNREACHABLE, output
    assert "cannot connect to Postgres at 127.0.0.1:" in output
    assert ("Traceback" in output) == debug, output
    assert_no_secret(output, f"`tagloop {' '.join(command)}`")
