"""docker-compose.yml cannot run here (no Docker engine): validate it against the Compose
Specification's JSON Schema (vendored in deploy/schemas/, no network) and check its shape."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TAGLOOP_SERVICES = ("tagger", "feedback", "learner", "trainer")  # long-running, our image
LONG_RUNNING = (*TAGLOOP_SERVICES, "kafka", "postgres", "triton", "kafka-exporter", "prometheus", "grafana")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads((ROOT / "deploy" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def base_image(dockerfile: str) -> str:
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith("FROM "):
            return line.split()[1]
    raise AssertionError(f"{dockerfile} has no FROM")


def setting_exists(env_name: str) -> bool:
    """Whether ``TAGLOOP_A__B`` names a field of :class:`Settings` (pydantic ignores unknown ones silently)."""
    model: type[BaseModel] = Settings
    parts = env_name.removeprefix("TAGLOOP_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            model = field.annotation  # type: ignore[assignment]
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                return False
    return True


def test_compose_file_validates_against_the_compose_specification() -> None:
    assert compose_errors(compose()) == []
    broken = copy.deepcopy(compose())
    broken["services"]["tagger"]["depends_on"]["kafka"]["condition"] = "service_up"  # not a condition
    broken["services"]["trainer"]["restart_policy"] = "always"  # a misspelt key (restart:)
    assert len(compose_errors(broken)) == 2  # the validation can fail


def test_compose_has_the_whole_stack_with_healthchecks() -> None:
    services = compose()["services"]
    for name in LONG_RUNNING:
        assert name in services, name
        assert "test" in services[name]["healthcheck"], f"{name} lacks a healthcheck"
        assert services[name].get("restart") == "unless-stopped" or name in ("kafka", "postgres", "triton"), name
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
    assert services["trainer"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in TAGLOOP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres" if name == "trainer" else "kafka"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        env = services[name]["environment"]
        assert all(k.startswith("TAGLOOP_") for k in env), name
        assert [k for k in env if not setting_exists(k)] == [], f"{name}: unknown TAGLOOP_ settings"
        assert env["TAGLOOP_OPS__HOST"] == "0.0.0.0"  # Prometheus scrapes from its own container
    assert tagger["environment"]["TAGLOOP_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_secrets_come_only_from_the_environment() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for key, value in re.findall(r"^\s*([A-Z_]*(?:PASSWORD|TOKEN|SECRET)[A-Z_]*):\s*(.+)$", text, re.M):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value.strip()), f"{key} must be ${{VAR:?}} from the environment"
    database_url = compose()["services"]["tagger"]["environment"]["TAGLOOP_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?" in database_url


def test_trainer_and_triton_share_the_model_repository() -> None:
    services = compose()["services"]
    triton_repo = next(v.split(":")[0] for v in services["triton"]["volumes"] if v.endswith(":/models"))
    trainer_mounts = {v.split(":")[1]: v for v in services["trainer"]["volumes"]}
    repo_in_trainer = services["trainer"]["environment"]["TAGLOOP_TRITON_MODEL_REPOSITORY"]
    assert trainer_mounts[repo_in_trainer].split(":")[0] == triton_repo
    assert not trainer_mounts[repo_in_trainer].endswith(":ro")  # the trainer exports candidates into it
    assert services["trainer"]["deploy"]["replicas"] == 1 and services["learner"]["deploy"]["replicas"] == 1


def test_prometheus_targets_are_compose_services_on_their_ops_ports() -> None:
    services = compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        targets = [t for s in job.get("static_configs", []) for t in s["targets"]]
        targets += [f"{n}:{d['port']}" for d in job.get("dns_sd_configs", []) for n in d["names"]]
        for target in targets:
            host, port = target.split(":")
            assert host in services, (job["job_name"], host)
            if host in TAGLOOP_SERVICES:  # the port the service is told to serve on, or its healthcheck's
                said = " ".join(services[host]["command"]) + json.dumps(services[host]["healthcheck"])
                assert port in said, (job["job_name"], target)


def test_prometheus_and_grafana_get_their_files_from_deploy() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), volume
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/tagloop.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"  # what the dashboard's panels name


@pytest.mark.parametrize("name", ["TAGLOOP_OPS__HOST", "TAGLOOP_TRITON__HTTP_URL", "TAGLOOP_DATA_DIR"])
def test_setting_exists_knows_settings(name: str) -> None:
    assert setting_exists(name)
    assert not setting_exists(name + "X") and not setting_exists("TAGLOOP_OPS__HOST__X")
