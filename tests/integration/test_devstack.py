"""`tagloop dev up|down|status` on the real pieces, in a private state directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.devstack import broker
from shared.devstack.postgres import postgres_ready
from shared.devstack.process import StackError, port_open
from shared.devstack.triton import triton_ready
from shared.kafka import broker_ready
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def tagloop(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAGLOOP_STATE_DIR": str(state_dir)}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)


@pytest.mark.slow  # 20-25 s: keeps the default suite under 15 minutes
def test_dev_up_status_down(tmp_path: Path) -> None:
    up = tagloop(tmp_path, "dev", "up")
    assert up.returncode == 0, up.stderr[-2000:]
    info = json.loads((tmp_path / "stack.json").read_text())["info"]
    try:
        assert broker_ready(KafkaSettings(bootstrap_servers=info["bootstrap_servers"]))
        assert postgres_ready(info["database_url"])
        assert triton_ready(info["triton_http_url"])
        assert "minilm_encoder" in info["triton_models"]
        status = json.loads(tagloop(tmp_path, "dev", "status").stdout)
        assert status["pieces"]["broker"]["running"] and status["pieces"]["triton"]["running"]
        assert status["pieces"]["postgres"]["running"]
    finally:
        down = tagloop(tmp_path, "dev", "down")
    assert down.returncode == 0
    assert "broker: stopped" in down.stdout and "triton: stopped" in down.stdout
    host, port = info["bootstrap_servers"].split(":")
    assert not port_open(host, int(port))
    assert not (tmp_path / "stack.json").exists()
    assert not list(tmp_path.glob("*.pid"))


def test_a_piece_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StackError) as err:
            broker.start_broker(tmp_path, port=busy.getsockname()[1])
    assert "broker" in str(err.value) and "broker.log" in str(err.value)
    assert not list(tmp_path.glob("*.pid"))
