"""A short ``tagloop eval loop`` on the real services (broker, Postgres, Triton, tagger, feedback, trainer).

What must hold whatever the learning curve: the bad candidate (shuffled labels) is rejected by
the gate, the forced canary is rolled back by the canary judgement alone, no listing is lost or
failed across the version swaps, every promoted version passed the gate's golden check, and the
services never restarted.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bench.loop import LoopConfig, run_loop
from shared.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(1800)
def test_short_loop_rejects_the_bad_candidate_rolls_back_the_forced_canary_and_loses_nothing(
    data_dir: Path, tmp_path: Path, postgres_server_url: str
) -> None:
    base = Settings(state_dir=tmp_path, data_dir=data_dir, database_url=postgres_server_url)
    databases_before = _loop_databases(postgres_server_url)
    result = run_loop(LoopConfig(data_dir, "flipkart", cycles=2, listings_per_cycle=200, canary_listings=200,
                                 limit=3000), base)
    assert result["rejected_bad_candidate"] is True
    assert any(reason.startswith("FAIL") for reason in result["details"]["bad_candidate_gate"])
    assert result["details"]["forced_canary"]["action"] == "rolled-back" and result["rollbacks"] >= 1
    assert result["failed_requests_during_swaps"] == 0
    assert all(result["details"]["processes_alive"].values())
    assert len(result["f1_by_cycle"]) == len(result["macro_f1_by_cycle"]) == len(result["cycle_seconds"]) == 3
    tolerance = Settings().trainer.gate_golden_micro_f1_tolerance
    for before, after in zip(result["f1_by_cycle"], result["f1_by_cycle"][1:], strict=False):
        assert after >= before - tolerance - 1e-9  # a promotion never costs more than the gate allows
    assert set(result["details"]["versions_seen"]) >= {"1"}
    assert _loop_databases(postgres_server_url) <= databases_before  # the run dropped its own database


def _loop_databases(server_url: str) -> set[str]:
    with psycopg.connect(server_url) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tagloop_loop_%'").fetchall()
    return {r[0] for r in rows}
