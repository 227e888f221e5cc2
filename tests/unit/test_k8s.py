"""deploy/k8s/ validated offline against the Kubernetes OpenAPI schemas (kubernetes-validate ships
them), strict (unknown fields fail), for a fixed Kubernetes version; then the scaling rules the
README states are checked on the manifests themselves."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_deploy import setting_exists

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"  # the oldest version the manifests rely on (PDB unhealthyPodEvictionPolicy is GA)
NAMESPACE = "tagloop"


def documents() -> list[tuple[str, dict[str, Any]]]:
    """Every manifest in deploy/k8s/ (examples/ included) as (file:kind/name, document)."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


DOCS = documents()


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[i for i, _ in DOCS])
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("breakage", ["misspelt field", "wrong type", "missing container name", "unknown kind"])
def test_an_invalid_manifest_fails_validation(breakage: str) -> None:
    doc = copy.deepcopy(objects("Deployment")["tagger"])
    container = pod_spec(doc)["containers"][0]
    if breakage == "misspelt field":
        doc["spec"]["replica"] = doc["spec"].pop("replicas")
    elif breakage == "wrong type":
        container["livenessProbe"]["periodSeconds"] = "ten"
    elif breakage == "missing container name":
        del container["name"]
    else:
        doc["kind"] = "Deploymnet"
    with pytest.raises((kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError)):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_service_has_a_deployment_with_probes_and_the_shared_configuration() -> None:
    deployments = objects("Deployment")
    assert {"tagger", "feedback", "learner", "trainer", "triton"} <= set(deployments)
    config, secret = objects("ConfigMap")["tagloop-config"], objects("Secret")["tagloop-secrets"]
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for container in pod_spec(deployment)["containers"]:
            assert "livenessProbe" in container and "readinessProbe" in container, name
            port_names = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in port_names, (name, probe)
            if name != "triton":
                refs = {next(iter(r)): next(iter(r.values()))["name"] for r in container["envFrom"]}
                assert refs == {"configMapRef": "tagloop-config", "secretRef": "tagloop-secrets"}, name
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            ports = {str(p["containerPort"]) for c in pod_spec(deployment)["containers"] for p in c["ports"]}
            assert annotations["prometheus.io/port"] in ports, name
    assert all(k.startswith("TAGLOOP_") or k == "HF_HUB_OFFLINE" for k in config["data"])
    assert [k for k in [*config["data"], *secret["stringData"]] if k.startswith("TAGLOOP_")
            and not setting_exists(k)] == []
    assert config["data"]["TAGLOOP_OPS__HOST"] == "0.0.0.0"  # probes and Prometheus come from outside the pod


def test_taggers_and_feedback_workers_scale_up_to_the_partitions_and_learner_and_trainer_stay_single() -> None:
    deployments = objects("Deployment")
    partitions = int(objects("ConfigMap")["tagloop-config"]["data"]["TAGLOOP_TOPICS__PARTITIONS"])
    for name in ("tagger", "feedback"):
        assert 1 < deployments[name]["spec"]["replicas"] <= partitions, name
    for name in ("learner", "trainer"):
        assert deployments[name]["spec"]["replicas"] == 1, name
        assert deployments[name]["spec"]["strategy"]["type"] == "Recreate", name
    pdb = objects("PodDisruptionBudget")["tagger"]
    tagger_labels = deployments["tagger"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= tagger_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_triton_gets_a_gpu_and_shares_the_model_repository_with_the_trainer() -> None:
    deployments, claims = objects("Deployment"), objects("PersistentVolumeClaim")
    triton = pod_spec(deployments["triton"])
    assert triton["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1

    def repository(spec: dict[str, Any], container: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        claim_of = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                    if "persistentVolumeClaim" in v}
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
        return claim_of[mount["name"]], mount

    trainer = pod_spec(deployments["trainer"])
    triton_claim, _ = repository(triton, triton["containers"][0])
    trainer_claim, trainer_mount = repository(trainer, trainer["containers"][0])
    assert triton_claim == trainer_claim and "ReadWriteMany" in claims[triton_claim]["spec"]["accessModes"]
    assert not trainer_mount.get("readOnly", False)  # the trainer exports candidates into it
    assert objects("ConfigMap")["tagloop-config"]["data"]["TAGLOOP_TRITON_MODEL_REPOSITORY"] == "/models"


def test_services_select_existing_pods() -> None:
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in objects("Deployment").values()]
    for name, service in objects("Service").items():
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pods), name
