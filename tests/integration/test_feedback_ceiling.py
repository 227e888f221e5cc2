"""The feedback bench's broker ceiling: every event of the backlog fetched (and decoded) once."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.feedback import broker_ceiling
from bench.feedback_loads import load
from shared.events import encode
from shared.settings import Settings

pytestmark = pytest.mark.integration


def test_the_ceiling_fetches_and_decodes_the_whole_backlog(
    base_settings: Settings, kafka_bootstrap: str, state_dir: Path
) -> None:
    _, events = load("uniform", "ceiling-test", 3_000, base_settings.data_dir)
    keyed = [(e.user_id.encode(), encode(e)) for e in events]
    out = broker_ceiling(base_settings, kafka_bootstrap, state_dir, keyed, batch_size=1_000)
    assert set(out) == {"fetch", "fetch+decode"}
    for measured in out.values():
        assert measured["events"] == len(keyed)  # each event once: nothing missed, nothing twice
        assert measured["events_per_s"] > 0 and measured["consumer_cpu_us_per_event"] > 0
