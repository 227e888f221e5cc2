"""The Prometheus config, alert rules and Grafana dashboard in deploy/ speak of metrics the services export.

A typo in a PromQL expression does not fail anywhere: the alert simply never fires and the
panel stays empty. So every metric name in deploy/ is checked against the registries the
services really build (their metrics classes, constructed here), plus the two exporters the
stack runs besides them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tagloop.json"

# Not ours: Prometheus' own `up`, and kafka-exporter's group lag (docker-compose.yml pins its image).
EXTERNAL = {"up", "kafka_consumergroup_lag"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported(registry: CollectorRegistry) -> set[str]:
    """The series names a registry exposes on /metrics (children or not yet)."""
    return {family.name + s for family in registry.collect() for s in SUFFIXES[family.type]}


@pytest.fixture(scope="module")
def service_metrics() -> dict[str, set[str]]:
    from services.feedback.app import Metrics as FeedbackMetrics
    from services.learner.health import LearnerHealth
    from services.tagger.metrics import TaggerMetrics
    from services.trainer.metrics import TrainerMetrics

    return {
        "tagger": exported(TaggerMetrics().registry),
        "feedback": exported(FeedbackMetrics().registry),
        "learner": exported(LearnerHealth().registry),
        "trainer": exported(TrainerMetrics().registry),
    }


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords, labels, strings or durations)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries ([5m], [$__rate_interval], [15m:1m])
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if m.group() in KEYWORDS or e[m.end():].lstrip().startswith("("):  # a keyword or a function call
            continue
        names.add(m.group())
    return names


def test_metric_names_reads_promql() -> None:
    expr = 'sum by (le) (rate(a_total{job="x-y", k=~"b_c"}[5m])) / clamp_min(b, 1e-9) > on() c offset 5m'
    assert metric_names(expr) == {"a_total", "b", "c"}
    assert metric_names("deriv(sum by (topic) (max by (topic, partition) (lag))[15m:1m]) > 0") == {"lag"}
    assert metric_names("time() - max(ts > 0)") == {"ts"}
    assert metric_names('increase(x_total{status="failed"}[$__rate_interval])') == {"x_total"}


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels if p["type"] != "row" for t in p["targets"]]


def unknown(exprs: list[str], known: set[str]) -> dict[str, set[str]]:
    return {e: missing for e in exprs if (missing := metric_names(e) - known)}


def test_every_metric_in_alerts_and_dashboard_is_exported(service_metrics: dict[str, set[str]]) -> None:
    known = set().union(*service_metrics.values()) | EXTERNAL
    exprs = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    assert all(metric_names(e) for e in exprs), "an expression without any metric"
    assert unknown(exprs, known) == {}
    # The check itself catches a typo (and a metric no service exports).
    assert unknown(["rate(tagloop_tagger_events_consumd_total[5m])"], known) != {}


def test_the_dashboard_covers_every_service_and_what_the_issue_names(service_metrics: dict[str, set[str]]) -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for service, names in service_metrics.items():
        assert used & names, f"no panel shows a metric of the {service}"
    for wanted in ("tagloop_tagger_consumer_lag", "tagloop_tagger_end_to_end_seconds_bucket",
                   "tagloop_tagger_circuit_open", "tagloop_tagger_tagged_by_version_total",
                   "tagloop_tagger_events_dead_lettered_total", "kafka_consumergroup_lag",
                   "tagloop_trainer_jobs_total", "tagloop_trainer_gate_decisions_total", "up"):
        assert wanted in used, wanted
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tagloop"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(t["datasource"]["uid"] == "prometheus" for p in dashboard["panels"] if p["type"] != "row"
               for t in p["targets"])


def test_alert_rules_have_the_prometheus_rule_group_shape() -> None:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert "for" not in rule or re.fullmatch(r"(\d+[smhdwy])+", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
    alerts = {r["alert"] for r in alert_rules()}
    # The failures an operator must hear about (issue 13).
    for wanted in ("TaggerConsumerLagGrowing", "ConsumerGroupLagGrowing", "TaggerCircuitOpen",
                   "TaggerDeadLetterRate", "FeedbackDeadLetterRate", "TrainerJobFailed", "CanaryRolledBack",
                   "LearnerDegraded", "ServiceDown"):
        assert wanted in alerts, wanted


def test_prometheus_scrapes_every_service_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # where docker-compose.yml mounts deploy/prometheus
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert {"tagger", "feedback", "learner", "trainer", "kafka", "triton"} <= jobs
    # The jobs the alerts select on exist.
    for rule in alert_rules():
        for job_re in re.findall(r'job=~?"([^"]+)"', rule["expr"]):
            assert any(re.fullmatch(job_re, j) for j in jobs), (rule["alert"], job_re)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) not installed")
def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
