"""The compose stack (docker-compose.yml, Dockerfile, deploy/): checked without a Docker engine.

The tests read what `docker-compose config` resolves (tests/deploy/compose.py: without the
binary they are skipped on a developer machine and failed in CI). Monitoring (Prometheus,
Grafana) is checked in test_monitoring.py.

The stack's environment is also fed to `Settings.from_env()` (and the gateway's exposure check)
in a subprocess, so a variable the services would refuse fails here, not at `make up`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.deploy.compose import (
    APP_SERVICES,
    DASHBOARD_FILE,
    GRAFANA,
    PROMETHEUS_FILE,
    ROOT,
    WORKERS,
    environment,
    mounts,
    run_config,
)

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
    _, stderr = run_config((), empty_env_file)
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
        mounted = mounts(stack["services"][name])
        assert target in mounted, (name, target)
        assert mounted[target] in named, f"{name}: {target} is not a named volume"
    # A fixed node name: RabbitMQ finds its data again when the container is recreated.
    assert stack["services"]["rabbitmq"].get("hostname") == "rabbitmq"


def test_files_mounted_from_the_repository_exist(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        for source in mounts(service).values():
            if source.startswith(("/", ".")):
                assert Path(source).exists(), f"{name} mounts a missing {source}"
    prometheus = mounts(stack["services"]["prometheus"])
    assert Path(prometheus["/etc/prometheus/prometheus.yml"]) == PROMETHEUS_FILE
    grafana = mounts(stack["services"]["grafana"])
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
