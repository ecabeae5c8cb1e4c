"""Monitoring in the compose stack: Prometheus finds every service, Grafana's dashboard shows
every metric the services define (and only those)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from common import metrics
from tests.deploy.compose import (
    APP_SERVICES,
    DASHBOARD_FILE,
    GRAFANA,
    PROMETHEUS_FILE,
    WORKERS,
    environment,
    load_yaml,
    mounts,
)

# --- Prometheus ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return load_yaml(PROMETHEUS_FILE.read_text())


def _job(prometheus: dict[str, Any], name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert name in jobs, f"prometheus.yml has no job {name!r}"
    return jobs[name]


def test_prometheus_scrapes_the_gateway(prometheus: dict[str, Any], stack: dict[str, Any]) -> None:
    job = _job(prometheus, "gateway")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    http_port = environment(stack["services"]["gateway"])["HTTP_ADDR"].rsplit(":", 1)[1]
    assert targets == [f"gateway:{http_port}"]


def test_prometheus_finds_every_worker_replica(
    prometheus: dict[str, Any], stack: dict[str, Any]
) -> None:
    for worker in WORKERS:
        job = _job(prometheus, worker)
        assert job.get("metrics_path", "/metrics") == "/metrics"
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [worker]  # the compose service name: one A record per replica
        assert sd.get("type", "SRV") == "A"
        port = environment(stack["services"][worker])["METRICS_ADDR"].rsplit(":", 1)[1]
        assert sd["port"] == int(port)


def test_prometheus_token_file_is_mounted(
    prometheus: dict[str, Any], stack: dict[str, Any]
) -> None:
    mounted = mounts(stack["services"]["prometheus"])
    for name in APP_SERVICES:
        auth = _job(prometheus, name).get("authorization")
        assert auth is not None, f"{name}: with AUTH_TOKENS set, /metrics needs a token"
        assert auth["credentials_file"] in mounted, name
    command = " ".join(stack["services"]["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command


# --- Grafana ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def test_grafana_provisioning(dashboard: dict[str, Any], stack: dict[str, Any]) -> None:
    (datasources_file,) = (GRAFANA / "provisioning" / "datasources").glob("*.yml")
    sources = {s["type"]: s for s in load_yaml(datasources_file.read_text())["datasources"]}
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["prometheus"].get("isDefault") is True
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == sources["prometheus"]["uid"]

    (providers_file,) = (GRAFANA / "provisioning" / "dashboards").glob("*.yml")
    (provider,) = load_yaml(providers_file.read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    assert "/etc/grafana/dashboards" in mounts(stack["services"]["grafana"])


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p["type"] != "row"]


def test_dashboard_panels_are_readable(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    titles = [p["title"] for p in panels]
    assert len(set(titles)) == len(titles), "two panels with the same title"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        assert panel["title"].strip() and panel.get("description"), panel["id"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# Labels every Prometheus series has (the scrape target's), and a histogram bucket's bound.
TARGET_LABELS = {"job", "instance"}
NAME = re.compile(r"\b(orchestrator_[a-z0-9_]+)\b\s*(\{([^}]*)\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def _registry() -> dict[str, tuple[str, set[str]]]:
    """Every series name the orchestrator's registry exposes -> (family name, label names)."""
    labels = {
        # prometheus-client keeps a metric's name and label names private.
        m._name: set(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: dict[str, tuple[str, set[str]]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith(f"{metrics.PREFIX}_"):
            continue
        assert family.name in labels, f"{family.name} is not defined in common/metrics.py"
        for suffix in suffixes[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = (family.name, labels[family.name] | extra)
    return names


def test_dashboard_uses_only_metrics_the_services_expose(dashboard: dict[str, Any]) -> None:
    known = _registry()
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            used = NAME.findall(expr)
            assert used or "up" in expr, f"{panel['title']}: no orchestrator metric"
            available = set(TARGET_LABELS)
            for name, _, matchers in used:
                assert name in known, f"{panel['title']}: {name} is not in common/metrics.py"
                labels = known[name][1]
                available |= labels
                for label in MATCHER.findall(matchers):
                    assert label in labels | TARGET_LABELS, f"{panel['title']}: {name}{{{label}}}"
            grouped: set[str] = set()
            for group in GROUPING.findall(expr):
                grouped |= {g.strip() for g in group.split(",") if g.strip()}
            if used:
                assert grouped <= available, f"{panel['title']}: by {grouped - available}"
            legend = set(LEGEND.findall(target.get("legendFormat", "")))
            assert legend <= grouped - {"le"}, f"{panel['title']}: legend {legend - grouped}"


def test_dashboard_shows_every_metric(dashboard: dict[str, Any]) -> None:
    known = _registry()
    families = {family for family, _ in known.values()}
    used = {
        known.get(name, (name, set()))[0]
        for panel in _panels(dashboard)
        for target in panel["targets"]
        for name, _, _ in NAME.findall(target["expr"])
    }
    missing = families - used
    assert not missing, f"metrics without a panel in {DASHBOARD_FILE.name}: {sorted(missing)}"


def test_dashboard_covers_the_brief(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in _panels(dashboard) for t in p["targets"])
    for needed in (
        "by (provider, outcome)",
        "by (provider, code)",
        "histogram_quantile(0.99, sum by (le, provider)",
        "orchestrator_provider_slots_in_use",
        "orchestrator_provider_slots_limit",
        "by (queue, outcome)",
        "by (transport)",
        "max by (kind, status) (orchestrator_jobs)",
        "max by (kind, status) (orchestrator_tasks)",
    ):
        assert needed in exprs, needed
