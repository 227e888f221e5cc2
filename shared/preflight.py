"""Checks a long-running command makes before it starts: does each piece of the stack it needs answer?

Once running, a service retries a lost broker, database or Triton for as long as it takes,
which is right in production and baffling to someone who forgot ``tagloop dev up``: a stream of
retry logs, or a traceback deep inside a client. These checks fail within seconds with one
:class:`~shared.cli_errors.Unreachable` that names the address and the setting to change.
"""

from __future__ import annotations

import time

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from shared.cli_errors import (
    BadSetting,
    Unreachable,
    kafka_unreachable,
    postgres_reason,
    postgres_unreachable,
    triton_reason,
    triton_unreachable,
)
from shared.kafka import client_config
from shared.settings import KafkaSettings, TritonSettings

_GIVE_UP = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._SSL,
                      KafkaError.SASL_AUTHENTICATION_FAILED})  # fmt: skip
_AUTH = _GIVE_UP - {KafkaError._ALL_BROKERS_DOWN}


def require_kafka(kafka: KafkaSettings, timeout_s: float = 5.0) -> None:
    """Return once the brokers answer a metadata request with these settings (security included)."""
    reported: list[KafkaError] = []
    # log_level 0: librdkafka would print a line per failed connection attempt; the error below says it once.
    admin = AdminClient(client_config(kafka) | {"error_cb": reported.append, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=0.5)
            return
        except KafkaException as exc:
            last: KafkaError = exc.args[0]
        admin.poll(0)  # delivers the client's errors to error_cb
        # "All brokers down" comes after one failed attempt on each: no need to wait out the timeout.
        if any(e.code() in _GIVE_UP for e in reported) or time.monotonic() >= deadline:
            raise _kafka_failure(kafka.bootstrap_servers, reported, last)


def _kafka_failure(bootstrap: str, reported: list[KafkaError], last: KafkaError) -> Unreachable:
    auth = [e for e in reported if e.code() in _AUTH]
    if auth:
        return kafka_unreachable(bootstrap, auth[0].str(), auth=True)
    # A connection error says why ("...: Connection refused"); "all brokers down" only that it failed.
    telling = [e for e in reported if e.code() not in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT)]
    return kafka_unreachable(bootstrap, (telling or [last])[0].str().rsplit(": ", 1)[-1])


def require_postgres(url: str, timeout_s: float = 5.0) -> None:
    """Return once a connection to ``url`` opens."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, round(timeout_s)), autocommit=True):
            return
    except psycopg.ProgrammingError as exc:  # not a URL libpq understands; its text may quote the password
        raise BadSetting("TAGLOOP_DATABASE_URL is not a Postgres URL (postgresql://user@host:port/db)") from exc
    except psycopg.Error as exc:
        raise postgres_unreachable(url, postgres_reason(exc)) from exc


def require_triton(triton: TritonSettings, timeout_s: float = 5.0) -> None:
    """Return once Triton's gRPC endpoint (what the tagger infers through) says it is ready."""
    import tritonclient.grpc as grpcclient  # gRPC is heavy: only commands that use Triton load it
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        ready = client.is_server_ready(client_timeout=timeout_s)
    except InferenceServerException as exc:
        raise triton_unreachable(triton.grpc_url, triton_reason(exc)) from exc
    finally:
        client.close()
    if not ready:
        raise Unreachable(f"Triton at {triton.grpc_url} answers but is not ready (a model failed to load?)",
                          "see Triton's log (`tagloop dev status` says where), or run `tagloop dev up`")
