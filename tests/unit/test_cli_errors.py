"""shared/cli_errors.py without a stack: each expected failure's exit code and words, and secrets blanked.

The exceptions are the real ones the clients raise (built with the clients' own classes);
the end-to-end walk through the installed command is tests/integration/test_cli_errors.py.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from fastapi.testclient import TestClient
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from services.learner.api import create_app
from shared.catalog.readers import locate_catalog, read_jsonl
from shared.catalog.records import CatalogFormatError, CatalogNotFound
from shared.cli_errors import ExitCode, explain, report, scrub
from shared.settings import Settings

DB_PASSWORD = "db-Pass-5519"
KAFKA_PASSWORD = "kafka-Sasl-Pw-7731"


@pytest.fixture(autouse=True)
def configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Addresses and secrets as a deployment sets them (no stack file: a private state dir)."""
    monkeypatch.setenv("TAGLOOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TAGLOOP_DATABASE_URL", f"postgresql://tagloop:{DB_PASSWORD}@db.internal:6432/tagloop")
    monkeypatch.setenv("TAGLOOP_KAFKA__BOOTSTRAP_SERVERS", "k1.internal:9093")
    monkeypatch.setenv("TAGLOOP_KAFKA__SASL_PASSWORD", KAFKA_PASSWORD)
    monkeypatch.setenv("TAGLOOP_TRITON__GRPC_URL", "triton.internal:8001")


def test_postgres_refusing_names_host_port_and_setting_never_the_password() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "10.0.0.5", port 6432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?"
    )
    err = explain(exc)
    assert err.exit_code == ExitCode.UNREACHABLE
    assert err.lines() == [
        "error: cannot connect to Postgres at db.internal:6432/tagloop (Connection refused)",
        "  run `tagloop dev up` or set TAGLOOP_DATABASE_URL",
    ]


def test_kafka_without_brokers_and_with_refused_credentials() -> None:
    down = explain(KafkaException(KafkaError(KafkaError._TRANSPORT, "Local: Broker transport failure")))
    assert down.exit_code == ExitCode.UNREACHABLE
    assert "Kafka is not reachable at k1.internal:9093" in down.lines()[0]
    assert "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS" in down.lines()[1]
    auth = explain(KafkaException(KafkaError(KafkaError._AUTHENTICATION, "SASL handshake failed")))
    assert auth.exit_code == ExitCode.UNREACHABLE and "TAGLOOP_KAFKA__SASL_" in auth.lines()[1]
    # Not every Kafka error is the stack being down: a rejected record is a plain unexpected error.
    other = explain(KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large")))
    assert other.exit_code == ExitCode.ERROR


def test_triton_unavailable_is_unreachable_other_triton_errors_are_not() -> None:
    refused = InferenceServerException("failed to connect to all addresses; ...: Connection refused",
                                       status="StatusCode.UNAVAILABLE")
    err = explain(refused)
    assert err.exit_code == ExitCode.UNREACHABLE
    assert err.lines()[0] == "error: Triton is not reachable at triton.internal:8001 (connection refused)"
    assert "TAGLOOP_TRITON__GRPC_URL" in err.lines()[1]
    unknown_model = InferenceServerException("Request for unknown model", status="StatusCode.NOT_FOUND")
    assert explain(unknown_model).exit_code == ExitCode.ERROR


def test_files_missing_unreadable_and_in_the_wrong_format(tmp_path: Path) -> None:
    with pytest.raises(CatalogNotFound) as missing:
        locate_catalog(tmp_path / "nope.csv", "csv")
    assert explain(missing.value).exit_code == ExitCode.MISSING_FILE
    assert explain(missing.value).lines()[0] == f"error: {tmp_path / 'nope.csv'}: no such file or folder"
    with pytest.raises(CatalogNotFound, match="reads one file"):
        locate_catalog(tmp_path, "jsonl")
    bad = tmp_path / "listings.jsonl"
    bad.write_text('{"title": "ok"}\nnot json\n')
    with pytest.raises(CatalogFormatError) as wrong:
        list(read_jsonl(bad))
    err = explain(wrong.value)
    assert err.exit_code == ExitCode.BAD_FORMAT and str(bad) in err.lines()[0]
    denied = explain(PermissionError(13, "Permission denied", "/etc/shadow"))
    assert denied.exit_code == ExitCode.MISSING_FILE and denied.lines()[0] == "error: /etc/shadow: Permission denied"


def test_flipkart_paths_a_user_may_give(data_dir: Path) -> None:
    for given in (data_dir, data_dir / "flipkart", data_dir / "flipkart" / "products.csv.gz"):
        assert locate_catalog(given, "flipkart") == data_dir


def test_a_bad_setting_names_the_variable_not_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGLOOP_LEARNER__MODEL", f"svm-{KAFKA_PASSWORD}")
    with pytest.raises(ValidationError) as exc:
        Settings()
    err = explain(exc.value)
    assert err.exit_code == ExitCode.BAD_SETTING
    assert err.lines()[0].startswith("error: bad setting TAGLOOP_LEARNER__MODEL: Input should be 'lr'")
    assert KAFKA_PASSWORD not in "\n".join(err.lines())


def test_anything_else_is_exit_1_and_points_at_debug() -> None:
    err = explain(ZeroDivisionError("division by zero"))
    assert err.exit_code == ExitCode.ERROR
    assert err.lines() == ["error: unexpected ZeroDivisionError: division by zero",
                           "  run again with `tagloop --debug ...` for the traceback, and report it"]


def test_report_blanks_every_configured_secret_even_in_the_traceback() -> None:
    def leaky() -> None:
        raise RuntimeError(f"client config {{'sasl.password': '{KAFKA_PASSWORD}'}} dsn=...:{DB_PASSWORD}@db")

    try:
        leaky()
    except RuntimeError as exc:
        out = io.StringIO()
        code = report(exc, out, show_traceback=True)
    text = out.getvalue()
    assert code == ExitCode.ERROR
    assert "Traceback (most recent call last)" in text and "'sasl.password': '***'" in text
    assert KAFKA_PASSWORD not in text and DB_PASSWORD not in text


def test_scrub_blanks_the_longest_secret_first() -> None:
    # "abcd" first would leave "***-efgh": part of the longer secret readable.
    assert scrub("token abcd-efgh", ["abcd", "abcd-efgh"]) == "token ***"


# ------------------------------------------------------------------------- every HTTP route needs the token

PUBLIC = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes (services/learner/api.py)
DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # FastAPI's own; describe, serve no data


class _NoModel:
    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        yield None


def test_every_learner_route_but_health_and_docs_needs_the_token() -> None:
    """Every route of any kind (not only the documented API routes): a route added later cannot skip auth."""
    app = create_app(_NoModel(), token="s3cret-route-token")
    client = TestClient(app)
    paths = {getattr(route, "path", "") for route in app.routes}
    private = sorted(paths - PUBLIC - DOCS)
    assert "/v1/stats" in private and "/v1/users/{user_id}/tags" in private
    for path in private:
        url = path.replace("{user_id}", "alice").replace("{tag_id}", "shoes")
        assert client.get(url).status_code == 401, path
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        # With the token the request gets past auth (503: this app has no model yet).
        assert client.get(url, headers={"Authorization": "Bearer s3cret-route-token"}).status_code == 503, path
