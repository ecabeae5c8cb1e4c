"""The compose stack (docker-compose.yml, Dockerfile, deploy/): checked without a Docker engine.

`docker-compose -f docker-compose.yml config` resolves and validates the file as Compose will run
it; the tests read its output. They need the `docker-compose` binary (Debian package
`docker-compose`): skipped without it on a developer machine, failed in CI (CI=true). YAML is read
with PyYAML when the project's environment has it, otherwise with the interpreter that runs
docker-compose (the Debian package depends on python3-yaml).

The stack's environment is also fed to `Settings.from_env()` (and the gateway's exposure check)
in a subprocess, so a variable the services would refuse fails here, not at `make up`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from common import metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "orchestrator.json"

APP_SERVICES = ("gateway", "video_worker", "story_worker")
WORKERS = ("video_worker", "story_worker")
SERVICES = {
    "rabbitmq",
    "postgres",
    "simulator",
    *APP_SERVICES,
    "prometheus",
    "grafana",
    "jaeger",
}
# service -> {container port: host port}, all published on 127.0.0.1 by default.
PUBLISHED = {
    "rabbitmq": {5672: 5672, 15672: 15672},
    "postgres": {5432: 5432},
    "simulator": {8100: 8100},
    "gateway": {50051: 50051, 8080: 8080},
    "prometheus": {9090: 9090},
    "grafana": {3000: 3000},
    "jaeger": {16686: 16686},
}
WORKER_METRICS_PORT = 9100


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(message: str) -> None:
    if _in_ci():
        pytest.fail(f"{message} (CI=true: the deploy tests must not skip)")
    pytest.skip(message)


# --- reading YAML and running docker-compose ---------------------------------------------------


def _yaml_interpreter() -> list[str] | None:
    """A command that turns YAML on stdin into JSON on stdout, or None."""
    script = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    candidates = [sys.executable]
    compose = shutil.which("docker-compose")
    if compose:
        with open(compose, "rb") as f:
            first = f.readline().decode(errors="replace")
        if first.startswith("#!") and "python" in first:
            candidates.append(first[2:].strip().split()[0])
    candidates.append("/usr/bin/python3")
    for python in candidates:
        if not Path(python).exists():
            continue
        probe = subprocess.run(
            [python, "-c", "import yaml"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [python, "-c", script]
    return None


def load_yaml(text: str) -> Any:
    command = _yaml_interpreter()
    if command is None:
        _unavailable("no Python with PyYAML to read YAML (install docker-compose or pyyaml)")
        raise AssertionError  # unreachable: _unavailable raises
    done = subprocess.run(
        command, input=text, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, f"YAML does not parse: {done.stderr}"
    return json.loads(done.stdout)


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        _unavailable(
            "docker-compose is not installed"
            " (apt-get install -y --no-install-recommends docker-compose)"
        )
        raise AssertionError  # unreachable
    return found


@cache
def _run_config(env_items: tuple[tuple[str, str], ...], empty_env_file: str) -> tuple[str, str]:
    """`docker-compose config` with only `env_items` (and PATH) in the environment and an empty
    env file, so neither the caller's shell nor a local .env changes the result."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path(empty_env_file).parent),
    }
    env.update(dict(env_items))
    done = subprocess.run(
        [
            _compose_binary(),
            "--env-file",
            empty_env_file,
            "-f",
            str(COMPOSE_FILE),
            "config",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return done.stdout, done.stderr


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return str(path)


@pytest.fixture(scope="module")
def compose_config(empty_env_file: str):
    def config(**env: str) -> dict[str, Any]:
        stdout, _ = _run_config(tuple(sorted(env.items())), empty_env_file)
        return load_yaml(stdout)

    return config


@pytest.fixture(scope="module")
def stack(compose_config) -> dict[str, Any]:
    """The resolved compose file with every variable at its default."""
    return compose_config()


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port; both the short syntax
    docker-compose 1.x prints and the long one Compose v2 prints."""
    found = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is None:
                continue
            found.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        spec = str(port).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:  # container port only: nothing fixed on the host
            continue
        host_ip = parts[0] if len(parts) == 3 else ""
        found.append((host_ip, int(parts[-2]), int(parts[-1])))
    return found


def healthcheck_command(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        return " ".join(str(t) for t in test)
    return str(test or "")


def _condition(service: dict[str, Any], dependency: str) -> str | None:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return "service_started" if dependency in depends else None
    entry = depends.get(dependency)
    return None if entry is None else entry.get("condition", "service_started")


# --- the compose file ------------------------------------------------------------------------


def test_config_validates_with_every_variable_defaulted(empty_env_file: str) -> None:
    _, stderr = _run_config((), empty_env_file)
    assert "not set" not in stderr, f"a variable without a default:\n{stderr}"


def test_services(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == SERVICES


def test_published_ports_are_on_loopback_by_default(stack: dict[str, Any]) -> None:
    for name, expected in PUBLISHED.items():
        ports = published_ports(stack["services"][name])
        assert {container: host for _, host, container in ports} == expected, name
        assert {ip for ip, _, _ in ports} == {"127.0.0.1"}, name


def test_publish_host_and_ports_can_be_moved(compose_config) -> None:
    moved = compose_config(PUBLISH_HOST="0.0.0.0", GRPC_PORT="6051", RABBITMQ_PORT="5673")
    gateway = published_ports(moved["services"]["gateway"])
    assert ("0.0.0.0", 6051, 50051) in gateway
    assert ("0.0.0.0", 5673, 5672) in published_ports(moved["services"]["rabbitmq"])


def test_every_service_has_a_health_check_and_a_restart_policy(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), name
        assert healthcheck_command(service), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name


def test_health_checks_probe_the_right_thing(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert "rabbitmq-diagnostics -q ping" in healthcheck_command(services["rabbitmq"])
    assert "pg_isready" in healthcheck_command(services["postgres"])
    assert "127.0.0.1:8080/healthz" in healthcheck_command(services["gateway"])
    assert "/_sim/health" in healthcheck_command(services["simulator"])
    for worker in WORKERS:
        command = healthcheck_command(services[worker])
        assert f"127.0.0.1:{WORKER_METRICS_PORT}/" in command, worker
    assert "/-/healthy" in healthcheck_command(services["prometheus"])
    assert "/api/health" in healthcheck_command(services["grafana"])


def test_start_order_waits_for_healthy_dependencies(stack: dict[str, Any]) -> None:
    services = stack["services"]
    for name in APP_SERVICES:
        for dependency in ("rabbitmq", "postgres", "simulator"):
            assert _condition(services[name], dependency) == "service_healthy", (name, dependency)
    assert _condition(services["grafana"], "prometheus") == "service_healthy"


def test_workers_scale(stack: dict[str, Any]) -> None:
    """`docker compose up --scale video_worker=3` needs no fixed name, hostname or host port."""
    for worker in WORKERS:
        service = stack["services"][worker]
        assert "container_name" not in service, worker
        assert "hostname" not in service, worker
        assert published_ports(service) == [], worker
        assert environment(service)["METRICS_ADDR"] == f"0.0.0.0:{WORKER_METRICS_PORT}"


def test_data_lives_in_named_volumes(stack: dict[str, Any]) -> None:
    named = set(stack.get("volumes") or {})
    wanted = {
        "postgres": "/var/lib/postgresql/data",
        "rabbitmq": "/var/lib/rabbitmq",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
        "story_worker": "/data/output",
    }
    for name, target in wanted.items():
        mounts = _mounts(stack["services"][name])
        assert target in mounts, (name, target)
        assert mounts[target] in named, f"{name}: {target} is not a named volume"
    # A fixed node name: RabbitMQ finds its data again when the container is recreated.
    assert stack["services"]["rabbitmq"].get("hostname") == "rabbitmq"


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of each volume of a service (short or long syntax)."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found[volume["target"]] = volume.get("source", "")
        else:
            source, target = str(volume).split(":")[:2]
            found[target] = source
    return found


def test_files_mounted_from_the_repository_exist(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        for source in _mounts(service).values():
            if source.startswith(("/", ".")):
                assert Path(source).exists(), f"{name} mounts a missing {source}"
    prometheus = _mounts(stack["services"]["prometheus"])
    assert Path(prometheus["/etc/prometheus/prometheus.yml"]) == PROMETHEUS_FILE
    grafana = _mounts(stack["services"]["grafana"])
    assert Path(grafana["/etc/grafana/provisioning"]) == GRAFANA / "provisioning"
    assert Path(grafana["/etc/grafana/dashboards"]) == DASHBOARD_FILE.parent


# --- the services' environment -------------------------------------------------------------------


def test_app_services_environment(stack: dict[str, Any]) -> None:
    services = stack["services"]
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["DATABASE_URL"] == (
            "postgresql+asyncpg://orchestrator:orchestrator@postgres:5432/orchestrator"
        )
        assert env["AMQP_URL"] == "amqp://orchestrator:orchestrator@rabbitmq:5672/"
        assert env["QUEUE_PREFIX"] == "orchestrator"
        assert env["LOG_FORMAT"] == "json"
        assert env["FAL_QUEUE_URL"] == "http://simulator:8100"
        assert env["OPENAI_BASE_URL"] == "http://simulator:8100/v1"
        assert env["FAL_KEY"] and env["OPENAI_API_KEY"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert env["OTEL_SERVICE_NAME"] == name
        assert not env.get("PUBLIC_HTTP_URL"), "webhooks are opt-in"
        assert env.get("WEBHOOK_SECRET") is None and env.get("AUTH_TOKENS") is None, name
    gateway = environment(services["gateway"])
    assert gateway["GRPC_ADDR"] == "0.0.0.0:50051"
    assert gateway["HTTP_ADDR"] == "0.0.0.0:8080"
    assert gateway["ALLOW_ANONYMOUS"] == "true"
    rabbitmq = environment(services["rabbitmq"])
    assert gateway["AMQP_URL"].startswith(
        f"amqp://{rabbitmq['RABBITMQ_DEFAULT_USER']}:{rabbitmq['RABBITMQ_DEFAULT_PASS']}@"
    )
    postgres = environment(services["postgres"])
    assert (
        f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@" in gateway["DATABASE_URL"]
    )
    assert gateway["DATABASE_URL"].endswith(f"/{postgres['POSTGRES_DB']}")
    simulator = environment(services["simulator"])
    assert simulator["SIMULATOR_ADDR"] == "0.0.0.0:8100"


def test_real_providers_keys_and_webhooks_come_from_the_shell(compose_config) -> None:
    given = {
        "FAL_KEY": "fal-real",
        "FAL_QUEUE_URL": "https://queue.fal.run",
        "OPENAI_API_KEY": "sk-real",
        "OPENAI_BASE_URL": "https://api.openai.com/v1",
        "AUTH_TOKENS": "ops:admin:sha256:" + "ab" * 32,
        "PUBLIC_HTTP_URL": "https://orchestrator.example.com",
        "WEBHOOK_SECRET": "s3cret",
        "ALLOW_ANONYMOUS": "false",
    }
    config = compose_config(**given)
    for name in APP_SERVICES:
        env = environment(config["services"][name])
        for key, value in given.items():
            if key != "ALLOW_ANONYMOUS":
                assert env[key] == value, (name, key)
    assert environment(config["services"]["gateway"])["ALLOW_ANONYMOUS"] == "false"
    _assert_settings_accept(config)


def test_the_services_accept_the_stack_environment(stack: dict[str, Any]) -> None:
    _assert_settings_accept(stack)


_CHECK_SETTINGS = """
import json, os, sys
from common.settings import Settings
from services.gateway.service import check_exposure
for name, env in json.load(sys.stdin).items():
    os.environ.clear()
    os.environ.update(env)
    settings = Settings.from_env()
    if name == "gateway":
        check_exposure(settings)
    print(name, "ok")
"""


def _assert_settings_accept(config: dict[str, Any]) -> None:
    """Settings.from_env() (and, for the gateway, the refusal to serve anonymously on 0.0.0.0)
    with each service's environment, as the container would see it."""
    envs = {
        name: {k: v for k, v in environment(config["services"][name]).items() if v is not None}
        for name in APP_SERVICES
    }
    done = subprocess.run(
        [sys.executable, "-c", _CHECK_SETTINGS],
        input=json.dumps(envs),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, f"a service refuses the stack's settings:\n{done.stderr}"
    assert done.stdout.split() == [w for name in APP_SERVICES for w in (name, "ok")]


# --- the image ---------------------------------------------------------------------------------


def test_dockerfile_builds_every_package_and_the_protos() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.MULTILINE))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").exists()
        and any(re.fullmatch(pat.replace("*", ".*"), p.name) for pat in patterns)
    }
    missing = packages - copied
    assert not missing, f"the image lacks {missing} (pyproject installs them)"
    assert {"pyproject.toml", "protos"} <= copied
    # The same protoc invocation as `make protos`.
    makefile = (ROOT / "Makefile").read_text()
    for flag in ("-Iprotos", "--python_out=gen", "--grpc_python_out=gen"):
        assert flag in makefile and flag in dockerfile, flag
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not (packages | {"protos", "pyproject.toml", "README.md"}) & ignored


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
    mounts = _mounts(stack["services"]["prometheus"])
    for name in APP_SERVICES:
        auth = _job(prometheus, name).get("authorization")
        assert auth is not None, f"{name}: with AUTH_TOKENS set, /metrics needs a token"
        assert auth["credentials_file"] in mounts, name
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
    assert "/etc/grafana/dashboards" in _mounts(stack["services"]["grafana"])


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
