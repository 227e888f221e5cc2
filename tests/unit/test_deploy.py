"""docker-compose.yml cannot run here (no Docker engine); check its shape instead."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def base_image(dockerfile: str) -> str:
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith("FROM "):
            return line.split()[1]
    raise AssertionError(f"{dockerfile} has no FROM")


def test_compose_has_the_production_services_with_healthchecks() -> None:
    services = compose()["services"]
    for name in ("kafka", "postgres", "triton", "tagger", "feedback", "learner"):
        assert name in services, name
        assert "test" in services[name]["healthcheck"], f"{name} lacks a healthcheck"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["postgres"]["image"].startswith("postgres:")


def test_triton_is_nvidia_image_with_gpu_reserved() -> None:
    triton = compose()["services"]["triton"]
    assert base_image(triton["build"]["dockerfile"]).startswith("nvcr.io/nvidia/tritonserver:")
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert "--model-control-mode=explicit" in triton["command"]


def test_services_wait_for_healthy_dependencies_and_use_tagloop_settings() -> None:
    services = compose()["services"]
    tagger = services["tagger"]
    assert tagger["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert tagger["depends_on"]["triton"]["condition"] == "service_healthy"
    assert all(k.startswith("TAGLOOP_") for k in tagger["environment"])
    assert tagger["environment"]["TAGLOOP_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
