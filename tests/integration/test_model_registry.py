"""The model registry against the real Postgres, `tagloop db migrate`'s seeding, and the tagger's choice of version."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from services.db_cli import migrate_all
from services.tagger.inference import choose_tag_model_version
from shared.db import applied_migrations
from shared.model_registry import InvalidTransition, ModelRegistry, ModelStatus, RegistryError, migrate
from shared.settings import Settings
from shared.tagmodel.card import ModelCard, VocabEntry, write_model_card
from shared.tagmodel.version_files import ENTRY_FILE, ENTRY_POINT

pytestmark = pytest.mark.integration
S = ModelStatus


@pytest.fixture(scope="module")
def registry(database_url: str) -> ModelRegistry:
    migrate(database_url)
    return ModelRegistry(database_url)


def _name() -> str:
    # The session database is shared: each test owns its model name.
    return f"tag_model_{uuid.uuid4().hex[:8]}"


def test_migration_is_recorded_and_idempotent(registry: ModelRegistry, database_url: str) -> None:
    assert migrate(database_url) == []
    assert [m.name for m in applied_migrations(database_url, "model_registry")] == ["create_model_versions"]
    assert registry.is_migrated()


def test_register_set_status_and_history(registry: ModelRegistry) -> None:
    name = _name()
    v1 = registry.register(name, 1, training_job_id="job-1", dataset_fingerprint="f" * 64,
                           metrics={"micro_f1": 0.9, "bad": float("nan"), "levels": {"1": {"f1": 0.8}}})  # fmt: skip
    assert (v1.status, v1.training_job_id, v1.dataset_fingerprint) == (S.CANDIDATE, "job-1", "f" * 64)
    assert v1.metrics == {"micro_f1": 0.9, "bad": None, "levels": {"1": {"f1": 0.8}}}  # NaN is not JSON
    assert v1.created_at is not None and v1.updated_at is not None
    assert registry.champion(name) is None
    with pytest.raises(RegistryError, match="registered already"):
        registry.register(name, 1)

    registry.set_status(name, 1, S.CANARY, "gate passed")
    v1 = registry.set_status(name, 1, S.CHAMPION, "canary not worse")
    assert v1.status == S.CHAMPION and v1.updated_at is not None and v1.created_at is not None
    assert v1.updated_at >= v1.created_at
    assert registry.champion(name) == v1
    assert registry.set_status(name, 1, S.CHAMPION) == v1  # already there: no change, no history row

    with pytest.raises(InvalidTransition, match="champion -> candidate"):
        registry.set_status(name, 1, S.CANDIDATE)
    with pytest.raises(RegistryError, match="not registered"):
        registry.set_status(name, 9, S.CANARY)

    moves = [(h.from_status, h.to_status, h.reason) for h in registry.history(name, 1)]
    assert moves == [(None, S.CANDIDATE, "registered"), (S.CANDIDATE, S.CANARY, "gate passed"),
                     (S.CANARY, S.CHAMPION, "canary not worse")]  # fmt: skip


def test_a_new_champion_retires_the_old_one_and_rollback_restores_it(registry: ModelRegistry) -> None:
    name = _name()
    registry.register(name, 1, status=S.CHAMPION, reason="first")
    registry.register(name, 2)
    registry.set_status(name, 2, S.CHAMPION, "promoted")
    assert registry.champion(name).version == 2  # type: ignore[union-attr]
    assert registry.get(name, 1).status == S.RETIRED  # type: ignore[union-attr]
    # Roll back: the bad champion is marked, the previous one reinstated.
    registry.set_status(name, 2, S.ROLLED_BACK, "acceptance fell")
    registry.set_status(name, 1, S.CHAMPION, "rollback")
    assert registry.champion(name).version == 1  # type: ignore[union-attr]
    assert [(v.version, v.status) for v in registry.list_versions(name)] == [(1, S.CHAMPION), (2, S.ROLLED_BACK)]
    assert [v.version for v in registry.list_versions(name, statuses=[S.ROLLED_BACK])] == [2]
    history = registry.history(name)
    assert [(h.version, h.to_status) for h in history] == [
        (1, S.CHAMPION), (2, S.CANDIDATE), (1, S.RETIRED), (2, S.CHAMPION), (2, S.ROLLED_BACK), (1, S.CHAMPION),
    ]  # fmt: skip
    assert history[2].reason.startswith("replaced by version 2")


def test_racing_promotions_leave_exactly_one_champion(registry: ModelRegistry, database_url: str) -> None:
    name = _name()
    for v in range(1, 7):
        registry.register(name, v)
    errors: list[BaseException] = []

    def promote(v: int) -> None:
        try:
            registry.set_status(name, v, S.CHAMPION, "race")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    statuses = [v.status for v in registry.list_versions(name)]
    assert statuses.count(S.CHAMPION) == 1 and statuses.count(S.RETIRED) == 5
    # The database itself refuses a second champion.
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE model_versions SET status = 'champion' WHERE model_name = %s", (name,))


def _write_version(repo: Path, name: str, version: int, old_entry: bool = False) -> Path:
    d = repo / name / str(version)
    d.mkdir(parents=True)
    card = ModelCard(
        model_name=name, version=version, data_fingerprint=f"{version}" * 64, metrics={"micro_f1": 0.5 + version / 10},
        vocabulary=[VocabEntry(tag_id="cat:clothing", name="Clothing", kind="category")], thresholds=[0.5],
    )  # fmt: skip
    write_model_card(d, card)
    text = 'from services.trainer.runtime import TritonTagModel  # Triton entry point of a tagloop tag model version'
    (d / ENTRY_FILE).write_text(text if old_entry else ENTRY_POINT)
    return d


def _settings(base_settings: Settings, repo: Path, name: str, database_url: str | None = None) -> Settings:
    return base_settings.model_copy(update={
        "triton_model_repository": repo,
        "triton": base_settings.triton.model_copy(update={"tag_model": name}),
        "database_url": database_url or base_settings.database_url,
    })  # fmt: skip


def test_db_migrate_seeds_the_newest_shipped_version_as_champion_once(base_settings: Settings, tmp_path: Path) -> None:
    name = _name()
    _write_version(tmp_path, name, 1, old_entry=True)
    s = _settings(base_settings, tmp_path, name)
    result = migrate_all(s)
    assert result["seeded_champion"] == f"{name}:1"
    assert result["made_portable"] == {"1": [ENTRY_FILE]}
    assert (tmp_path / name / "1" / ENTRY_FILE).read_text() == ENTRY_POINT
    champion = ModelRegistry(s).champion(name)
    assert champion is not None and champion.version == 1 and champion.dataset_fingerprint == "1" * 64
    assert champion.metrics == {"micro_f1": 0.6}
    # Not again: the registry knows the model now, whatever the repository holds.
    _write_version(tmp_path, name, 2)
    again = migrate_all(s)
    assert again["seeded_champion"] is None and again["applied"] == [] and again["made_portable"] == {}
    assert ModelRegistry(s).champion(name).version == 1  # type: ignore[union-attr]


def test_db_migrate_with_an_empty_repository_seeds_nothing(base_settings: Settings, tmp_path: Path) -> None:
    s = _settings(base_settings, tmp_path, _name())
    assert migrate_all(s)["seeded_champion"] is None


def test_the_tagger_serves_the_registry_champion_else_the_newest_version_on_disk(
    base_settings: Settings, registry: ModelRegistry, tmp_path: Path
) -> None:
    name = _name()
    for v in (1, 2):
        _write_version(tmp_path, name, v)
    s = _settings(base_settings, tmp_path, name)
    assert asyncio.run(choose_tag_model_version(s)) == 2  # registry empty for this model: newest on disk
    registry.register(name, 1, status=S.CHAMPION)
    registry.register(name, 2)  # a newer candidate on disk does not serve
    assert asyncio.run(choose_tag_model_version(s)) == 1
    # A registry that cannot be reached: what served before the registry existed, with a warning.
    unreachable = _settings(base_settings, tmp_path, name, "postgresql://nobody@127.0.0.1:1/none")
    assert asyncio.run(choose_tag_model_version(unreachable)) == 2
