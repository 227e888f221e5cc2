"""Expected failures of the ``tagloop`` command: one or two plain lines and a documented exit code.

A newcomer who runs a command without the stack, with a wrong path or a bad setting gets
what is wrong and what to do, not a traceback (that comes with ``tagloop --debug`` or
``TAGLOOP_DEBUG=1``). The exit codes are documented in the README ("Exit codes and errors"):

==  =====================================================================
1   anything unexpected (a bug: run again with ``--debug`` and report it)
2   bad usage: an unknown command or flag, a bad flag value (click's own)
3   a file or folder that is missing or cannot be opened
4   a file in the wrong format
5   a piece of the stack not reachable: Kafka, Postgres or Triton
6   a bad setting: a ``TAGLOOP_`` environment variable (or the stack file)
==  =====================================================================

Examples
--------
>>> err = explain(FileNotFoundError(2, "No such file or directory", "/no/such.csv"))
>>> int(err.exit_code), err.lines()[0]
(3, 'error: /no/such.csv: No such file or directory')
"""

from __future__ import annotations

import errno
import os
import re
import traceback
import urllib.error
from enum import IntEnum
from typing import IO, ClassVar

import psycopg
from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError

from shared.catalog.records import CatalogFormatError

DEV_UP = "run `tagloop dev up`"


class ExitCode(IntEnum):
    ERROR = 1
    USAGE = 2
    MISSING_FILE = 3
    BAD_FORMAT = 4
    UNREACHABLE = 5
    BAD_SETTING = 6


class UserFacingError(Exception):
    """A failure the user can fix: ``message`` says what is wrong, ``hint`` what to do."""

    exit_code: ClassVar[ExitCode] = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def lines(self) -> list[str]:
        return [f"error: {self.message}"] + ([f"  {self.hint}"] if self.hint else [])


class MissingFile(UserFacingError):
    exit_code = ExitCode.MISSING_FILE


class BadFormat(UserFacingError):
    exit_code = ExitCode.BAD_FORMAT


class Unreachable(UserFacingError):
    exit_code = ExitCode.UNREACHABLE


class BadSetting(UserFacingError):
    exit_code = ExitCode.BAD_SETTING


# librdkafka's codes for "no broker answered" (connection, name resolution, metadata timeout).
_KAFKA_DOWN = frozenset(
    {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._TIMED_OUT,
     KafkaError._MSG_TIMED_OUT}
)  # fmt: skip
_KAFKA_AUTH = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED})


def kafka_unreachable(bootstrap: str, reason: str, auth: bool = False) -> Unreachable:
    reason = kafka_reason(reason)
    if auth:
        return Unreachable(
            f"Kafka at {bootstrap} refused the connection's security settings ({reason})",
            "check TAGLOOP_KAFKA__SECURITY_PROTOCOL, TAGLOOP_KAFKA__SASL_* and TAGLOOP_KAFKA__SSL_*",
        )
    return Unreachable(f"Kafka is not reachable at {bootstrap} ({reason})",
                       f"{DEV_UP} or set TAGLOOP_KAFKA__BOOTSTRAP_SERVERS")


def kafka_reason(text: str) -> str:
    """librdkafka's words without the broker prefix and the state suffix it adds to every line.

    >>> kafka_reason("sasl_plaintext://k1:9092/bootstrap: SASL handshake failed (after 0ms in state AUTH_HANDSHAKE)")
    'SASL handshake failed'
    """
    text = re.sub(r"^\S+/(bootstrap|\d+): ", "", text.strip())
    return re.sub(r"\s*\(after \d+ms in state \w+\)$", "", text)


def postgres_unreachable(url: str, reason: str) -> Unreachable:
    return Unreachable(f"cannot connect to Postgres at {postgres_address(url)} ({reason})",
                       f"{DEV_UP} or set TAGLOOP_DATABASE_URL")


def triton_unreachable(grpc_url: str, reason: str) -> Unreachable:
    return Unreachable(f"Triton is not reachable at {grpc_url} ({reason})",
                       f"{DEV_UP} or set TAGLOOP_TRITON__GRPC_URL (and TAGLOOP_TRITON__HTTP_URL)")


def postgres_address(url: str) -> str:
    """``host:port/dbname`` of a Postgres URL or conninfo string: never the user or password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "<an unparsable TAGLOOP_DATABASE_URL>"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def postgres_reason(exc: BaseException) -> str:
    """The server's or libpq's own words, without psycopg's "connection to server at ... failed:" prefix."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first.rsplit("failed: ", 1)[-1].strip()


def explain(exc: BaseException) -> UserFacingError:
    """The plain-words version of ``exc``; an unexpected exception becomes a generic exit-1 error."""
    if isinstance(exc, UserFacingError):
        return exc
    for classify in (_settings_error, _file_error, _stack_error):
        found = classify(exc)
        if found is not None:
            return found
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return UserFacingError(f"unexpected {type(exc).__name__}: {first}",
                           "run again with `tagloop --debug ...` for the traceback, and report it")


def _settings_error(exc: BaseException) -> UserFacingError | None:
    if not (isinstance(exc, ValidationError) and exc.title == "Settings"):
        return None
    # Never the input value: a wrong setting may be a secret one.
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    name = "TAGLOOP_" + "__".join(str(part) for part in first["loc"]).upper()
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return BadSetting(f"bad setting {name}: {first['msg']}{more}",
                      "fix that environment variable (or the stack file `tagloop dev up` wrote)")


def _file_error(exc: BaseException) -> UserFacingError | None:
    if isinstance(exc, CatalogFormatError):
        return BadFormat(str(exc), "pass the file with the matching --format (flipkart, csv or jsonl)")
    if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError) and (
        exc.filename is not None
    ):
        return MissingFile(f"{exc.filename}: {exc.strerror}",
                           "check the path; data files default to those under TAGLOOP_DATA_DIR")
    return None


def _stack_error(exc: BaseException) -> UserFacingError | None:
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled):
        return postgres_unreachable(_configured("database_url"), postgres_reason(exc))
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        code = exc.args[0].code()
        if code in _KAFKA_DOWN | _KAFKA_AUTH:
            return kafka_unreachable(_configured("kafka.bootstrap_servers"), exc.args[0].str(), code in _KAFKA_AUTH)
    if type(exc).__name__ == "KafkaConnectionError":  # aiokafka's (the feedback service, faust)
        return kafka_unreachable(_configured("kafka.bootstrap_servers"), str(exc))
    if type(exc).__name__ == "InferenceServerException":  # tritonclient, imported only where Triton is used
        status = str(exc.status() or "")  # type: ignore[attr-defined]
        if "UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status:
            return triton_unreachable(_configured("triton.grpc_url"), triton_reason(exc))
    refused = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(refused, OSError) and refused.errno == errno.ECONNREFUSED:
        return Unreachable(f"a service refused the connection ({refused.strerror})",
                           f"{DEV_UP} or check the TAGLOOP_ addresses (`tagloop dev status`)")
    return None


def triton_reason(exc: BaseException) -> str:
    text = str(getattr(exc, "message", lambda: exc)())
    return "connection refused" if "Connection refused" in text else text.splitlines()[0][:160]


def _configured(path: str) -> str:
    """A setting by dotted path, for naming the address in a message ("?" if the settings themselves are bad)."""
    from shared.settings import Settings

    try:
        value: object = Settings()
    except Exception:  # bad settings or an unreadable stack file: the message must still come out
        return "?"
    for part in path.split("."):
        value = getattr(value, part)
    return str(value)


def known_secrets() -> list[str]:
    """Every configured secret: the Kafka SASL password, API tokens, the database password.

    From the settings when they are valid and from the ``TAGLOOP_*`` environment either way.
    Secrets shorter than 4 characters are left alone: blanking them would garble every message.
    """
    from shared.settings import Settings

    found = [v for k, v in os.environ.items()
             if k.startswith("TAGLOOP_") and any(w in k for w in ("PASSWORD", "TOKEN", "SECRET"))]
    urls = [os.environ.get("TAGLOOP_DATABASE_URL", "")]
    try:
        settings = Settings()
    except Exception:  # the environment scan above still finds what was set there
        settings = None
    if settings is not None:
        urls.append(settings.database_url)
        found += [settings.api_token.get_secret_value(), settings.learner.api_token.get_secret_value()]
        if settings.kafka.sasl_password is not None:
            found.append(settings.kafka.sasl_password.get_secret_value())
    for url in urls:
        try:
            found.append(str(psycopg.conninfo.conninfo_to_dict(url).get("password") or ""))
        except psycopg.Error:
            continue
    return sorted({s for s in found if len(s) >= 4})


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``***``.

    >>> scrub("postgresql://u:hunter22@h/db", ["hunter22"])
    'postgresql://u:***@h/db'
    """
    for secret in sorted(secrets, key=len, reverse=True):  # a secret containing another goes first
        text = text.replace(secret, "***")
    return text


def report(exc: BaseException, stream: IO[str], show_traceback: bool = False) -> int:
    """Write ``exc`` to ``stream`` as plain lines (after its traceback if asked); return the exit code."""
    error = explain(exc)
    secrets = known_secrets()
    if show_traceback:
        stream.write(scrub("".join(traceback.format_exception(exc)), secrets))
    for line in error.lines():
        stream.write(scrub(line, secrets) + "\n")
    stream.flush()
    return int(error.exit_code)
