"""The `tagloop` command as a newcomer meets it (issue 13): common mistakes end in plain words.

Each case runs the installed console script as a subprocess, the way a user types it: a
piece of the stack on a closed port, a missing file, a file in the wrong format, a bad flag,
a bad ``TAGLOOP_`` value. Each must exit with its documented code (shared/cli_errors.py,
README "Exit codes and errors") and print one or two lines on stderr that name the culprit
and the fix, never a traceback; ``--debug`` (or ``TAGLOOP_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli_errors import ExitCode
from shared.devstack.process import free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TAGLOOP = Path(sys.executable).with_name("tagloop")  # the console script pyproject installs


def tagloop(*args: str, env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``tagloop args`` with only ``env`` as its TAGLOOP_ settings (no stack file: a private state dir)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TAGLOOP_")}
    return subprocess.run([str(TAGLOOP), *args], env=base | {"HF_HUB_OFFLINE": "1"} | env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout_s)


def assert_plain(result: subprocess.CompletedProcess[str], code: ExitCode, *named: str) -> list[str]:
    """Exit ``code``; stderr is one or two lines naming everything in ``named``; no traceback anywhere."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == code, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, shown
    for name in named:
        assert name in result.stderr, f"{name!r} not named\n{shown}"
    return lines


@pytest.fixture
def env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """Settings of a user with no stack running: every address a closed loopback port."""
    return {
        "TAGLOOP_STATE_DIR": str(tmp_path / "state"),
        "TAGLOOP_DATA_DIR": str(data_dir),
        "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "TAGLOOP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        "TAGLOOP_TRITON__GRPC_URL": f"127.0.0.1:{free_port()}",
        "TAGLOOP_TRITON__HTTP_URL": f"127.0.0.1:{free_port()}",
    }


# ------------------------------------------------------------------------- missing and wrong files


def test_produce_from_a_path_that_does_not_exist(env: dict[str, str]) -> None:
    missing = "/path/that/does/not/exist.csv"
    lines = assert_plain(tagloop("produce", "listings", "--from", missing, env=env), ExitCode.MISSING_FILE, missing)
    assert "flipkart/products.csv.gz" not in lines[0]  # the path as given, not one derived from it


def test_produce_from_a_folder_without_the_catalog(env: dict[str, str], tmp_path: Path) -> None:
    assert_plain(tagloop("produce", "listings", "--from", str(tmp_path), env=env), ExitCode.MISSING_FILE,
                 str(tmp_path), "flipkart/products.csv.gz")


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"uniq_id,product_name\n1,a\n", "gzip"), (gzip.compress(b"id,title\n1,a shirt\n"), "no column 'uniq_id'")],
    ids=["not-gzip", "wrong-columns"],
)
def test_produce_from_a_catalog_in_the_wrong_format(env: dict[str, str], tmp_path: Path, content: bytes,
                                                    why: str) -> None:
    products = tmp_path / "flipkart" / "products.csv.gz"
    products.parent.mkdir()
    products.write_bytes(content)
    assert_plain(tagloop("produce", "listings", "--from", str(products), env=env), ExitCode.BAD_FORMAT,
                 str(products), why)


def test_train_on_a_missing_file(env: dict[str, str]) -> None:
    assert_plain(tagloop("train", "--data", "/no/such/listings.csv", "--format", "csv", env=env),
                 ExitCode.MISSING_FILE, "/no/such/listings.csv")


def test_train_on_a_file_in_the_wrong_format(env: dict[str, str], tmp_path: Path) -> None:
    listings = tmp_path / "listings.jsonl"
    listings.write_text("title,labels\nred shirt,Clothing\n")  # a CSV given as JSON lines
    assert_plain(tagloop("train", "--data", str(listings), "--format", "jsonl", "--quick", "--no-export",
                         "--out", str(tmp_path / "run"), env=env), ExitCode.BAD_FORMAT, str(listings), "JSON lines")


# ------------------------------------------------------------------------- the stack not running


def test_produce_without_a_broker(env: dict[str, str]) -> None:
    bootstrap = env["TAGLOOP_KAFKA__BOOTSTRAP_SERVERS"]
    assert_plain(tagloop("produce", "listings", "--limit", "3", env=env), ExitCode.UNREACHABLE,
                 f"Kafka is not reachable at {bootstrap}", "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS", "tagloop dev up")


def test_tagger_without_triton(env: dict[str, str], kafka_bootstrap: str) -> None:
    env |= {"TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}  # the broker is up, Triton is not
    grpc = env["TAGLOOP_TRITON__GRPC_URL"]
    assert_plain(tagloop("tagger", "run", env=env), ExitCode.UNREACHABLE,
                 f"Triton is not reachable at {grpc}", "TAGLOOP_TRITON__GRPC_URL", "tagloop dev up")


@pytest.mark.parametrize("command", [["feedback", "run"], ["learner", "run"]], ids=" ".join)
def test_services_without_postgres(env: dict[str, str], kafka_bootstrap: str, command: list[str]) -> None:
    env |= {"TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    port = env["TAGLOOP_DATABASE_URL"].split(":")[-1].split("/")[0]
    assert_plain(tagloop(*command, env=env), ExitCode.UNREACHABLE,
                 f"Postgres at 127.0.0.1:{port}", "TAGLOOP_DATABASE_URL")


@pytest.mark.parametrize("command", [["db", "migrate"], ["learner", "serve"], ["feedback", "verify"]], ids=" ".join)
def test_postgres_commands_without_postgres(env: dict[str, str], command: list[str]) -> None:
    assert_plain(tagloop(*command, env=env), ExitCode.UNREACHABLE, "Postgres at 127.0.0.1:", "TAGLOOP_DATABASE_URL")


# ------------------------------------------------------------------------- bad flags and settings


@pytest.mark.parametrize(
    ("args", "named"),
    [(["produce", "listings", "--bogus"], "--bogus"), (["no-such-command"], "no-such-command"),
     (["produce", "listings", "--limit", "many"], "--limit"), (["train", "--format", "parquet"], "parquet")],
    ids=["unknown-flag", "unknown-command", "bad-value", "bad-format"],
)
def test_bad_usage_exits_2(env: dict[str, str], args: list[str], named: str) -> None:
    result = tagloop(*args, env=env)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_a_bad_setting_names_its_variable(env: dict[str, str]) -> None:
    env |= {"TAGLOOP_LEARNER__HTTP_PORT": "eighty"}
    lines = assert_plain(tagloop("learner", "serve", env=env), ExitCode.BAD_SETTING, "TAGLOOP_LEARNER__HTTP_PORT")
    assert "eighty" not in lines[0]  # values are never echoed: a bad one may be a secret


# ------------------------------------------------------------------------- --debug


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_adds_the_traceback_and_keeps_the_exit_code(env: dict[str, str], how: str) -> None:
    missing = "/path/that/does/not/exist.csv"
    args = ["--debug"] if how == "flag" else []
    result = tagloop(*args, "produce", "listings", "--from", missing,
                     env=env | ({"TAGLOOP_DEBUG": "1"} if how == "env" else {}))
    assert result.returncode == ExitCode.MISSING_FILE, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().splitlines()[-2].startswith(f"error: {missing}")  # the plain lines come last
