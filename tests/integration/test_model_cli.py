"""`tagloop model list | history | promote | rollback | shadow | canary` against the real Postgres and Triton.

The commands run through the real ``tagloop`` app (typer's CliRunner, settings from the
environment as an operator's shell would give them). Every move checks both sides: the
registry row and the versions the running Triton serves.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from shared.devstack import stack
from shared.devstack.triton import TritonEndpoints
from shared.model_registry import ModelRegistry, ModelStatus, migrate
from shared.triton_admin import TritonAdmin
from tests.integration.tag_versions import (  # noqa: F401  (quick_v1 is a fixture)
    copy_version,
    quick_v1,
    tag_model_triton,
    unique_model_name,
)

pytestmark = pytest.mark.integration
S = ModelStatus
DRAIN_S = 1.0  # 2 x the tagger refresh interval set below


@dataclass(frozen=True)
class Ops:
    model: str
    registry: ModelRegistry
    triton: TritonEndpoints
    env: dict[str, str]

    def run(self, *args: str, **env: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["model", *args], env={**self.env, **env})
        assert "Traceback" not in result.output
        if result.exit_code not in (0, 1) or (result.exception and not isinstance(result.exception, SystemExit)):
            raise AssertionError(f"tagloop model {' '.join(args)} crashed: {result.output}") from result.exception
        return result.exit_code, result.output.strip()

    def served(self) -> list[int]:
        with TritonAdmin(self.triton.http_url) as admin:
            return admin.ready_versions(self.model)

    def status(self, version: int) -> ModelStatus:
        row = self.registry.get(self.model, version)
        assert row is not None
        return row.status


@pytest.fixture(scope="module")
def ops(
    quick_v1: Path, database_url: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> Iterator[Ops]:
    model, repo = unique_model_name(), tmp_path_factory.mktemp("model-cli-repo")
    for _ in range(3):  # versions 1-3: the same tiny model, which is all ops need
        copy_version(quick_v1, repo, model)
    migrate(database_url)
    registry = ModelRegistry(database_url)
    registry.register(model, 1, status=S.CHAMPION, reason="test setup")
    registry.register(model, 2, training_job_id="fast-test", dataset_fingerprint="f" * 64,
                      metrics={"micro_f1": 0.91, "macro_f1": 0.7})  # fmt: skip
    registry.register(model, 3)
    with tag_model_triton(tmp_path_factory.mktemp("model-cli-triton"), repo, model, [1]) as endpoints:
        env = {
            "TAGLOOP_DATABASE_URL": database_url,
            "TAGLOOP_STATE_DIR": str(tmp_path_factory.mktemp("model-cli-state")),  # no dev-stack file
            "TAGLOOP_TRITON__HTTP_URL": endpoints.http_url,
            "TAGLOOP_TRITON__TAG_MODEL": model,
            "TAGLOOP_TAGGER__ROLLOUT_REFRESH_S": str(DRAIN_S / 2),
        }
        yield Ops(model, registry, endpoints, env)


def test_shadow_canary_promote_rollback_keep_registry_and_triton_in_step(ops: Ops) -> None:
    code, out = ops.run("shadow", "2")
    assert code == 0 and out == f"{ops.model} 2: candidate -> shadow; triton serves 1, 2"
    assert ops.status(2) == S.SHADOW and ops.served() == [1, 2]

    code, out = ops.run("canary", "2", "--share", "0.25")
    assert code == 0 and out == f"{ops.model} 2: shadow -> canary (share 0.25); triton serves 1, 2"
    row = ops.registry.get(ops.model, 2)
    assert row is not None and row.status == S.CANARY and row.metrics["canary_share"] == 0.25
    assert row.metrics["micro_f1"] == 0.91  # the share is merged into the metrics, nothing lost

    code, out = ops.run("promote", "2")
    assert code == 0 and "canary -> champion; previous champion 1 kept loaded for rollback" in out
    assert (ops.status(2), ops.status(1)) == (S.CHAMPION, S.RETIRED)
    assert ops.served() == [1, 2]

    code, out = ops.run("rollback")
    assert code == 0 and out == f"{ops.model}: 2 rolled back, 1 is champion again; triton serves 1, 2"
    assert (ops.status(2), ops.status(1)) == (S.ROLLED_BACK, S.CHAMPION)

    code, out = ops.run("history", "2")
    assert code == 0
    moves = [line.split("  ")[1] for line in out.splitlines()]
    assert moves == ["(new) -> candidate", "candidate -> shadow", "shadow -> canary", "canary -> champion",
                     "champion -> rolled-back"]  # fmt: skip

    # Once taggers had time to leave it, the rolled-back version is dropped by the next change.
    time.sleep(DRAIN_S + 0.5)
    code, out = ops.run("shadow", "3")
    assert code == 0 and out.endswith("triton serves 1, 3")
    assert ops.served() == [1, 3]


def test_list_shows_every_version_with_status_and_metrics(ops: Ops) -> None:
    code, out = ops.run("list")
    assert code == 0
    lines = {int(line.split()[0]): line for line in out.splitlines()}
    assert set(lines) >= {1, 2, 3}
    assert "micro_f1=0.9100" in lines[2] and "job=fast-test" in lines[2]
    code, out = ops.run("list", "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert code == 0 and rows[2]["dataset_fingerprint"] == "f" * 64 and rows[2]["canary_share"] == 0.25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("promote", "99"), "version 99 is not registered"),
        (("history", "99"), "version 99 is not registered"),
        (("canary", "2"), "rolled-back -> canary is not allowed"),
        (("promote", "2"), "rolled-back -> champion is not allowed"),
        (("canary", "1", "--share", "1.5"), "canary share must be in (0, 1]"),
    ],
)
def test_expected_failures_print_one_line_and_exit_1(ops: Ops, args: tuple[str, ...], message: str) -> None:
    code, out = ops.run(*args)
    assert code == 1 and message in out and len(out.splitlines()) == 1


def test_unreachable_triton_or_postgres_changes_nothing(ops: Ops) -> None:
    before = {v.version: v.status for v in ops.registry.list_versions(ops.model)}
    code, out = ops.run("promote", "3", TAGLOOP_TRITON__HTTP_URL="127.0.0.1:1")
    assert code == 1 and "triton at 127.0.0.1:1 is not reachable" in out and len(out.splitlines()) == 1
    code, out = ops.run("list", TAGLOOP_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert code == 1 and out.startswith("model registry unreachable") and len(out.splitlines()) == 1
    assert {v.version: v.status for v in ops.registry.list_versions(ops.model)} == before


def test_rollback_without_a_previous_champion_and_an_unmigrated_registry(ops: Ops, postgres_server_url: str) -> None:
    if ops.status(1) != S.CHAMPION:
        pytest.skip("runs after the rollout test, which leaves version 1 champion with no predecessor")
    code, out = ops.run("rollback")
    assert code == 1 and out == f"{ops.model} has no previous champion to restore"
    name = f"tagloop_test_empty_{uuid.uuid4().hex[:8]}"
    url = stack.ensure_database(postgres_server_url, name)
    try:
        code, out = ops.run("list", TAGLOOP_DATABASE_URL=url)
    finally:
        stack.drop_database(postgres_server_url, name)
    assert code == 1 and out == "the model registry is not migrated: run `tagloop db migrate`"
