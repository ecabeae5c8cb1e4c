"""Reading the compose stack without a Docker engine: `docker-compose config` and YAML.

`docker-compose -f docker-compose.yml config` resolves and validates the file as Compose will run
it. It needs the `docker-compose` binary (Debian package `docker-compose`): the tests that use it
are skipped without it on a developer machine and failed in CI (CI=true). YAML is read with
PyYAML when the project's environment has it, otherwise with the interpreter that runs
docker-compose (the Debian package depends on python3-yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "orchestrator.json"
APP_SERVICES = ("gateway", "video_worker", "story_worker")
WORKERS = ("video_worker", "story_worker")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(f"{message} (CI=true: the deploy tests must not skip)")
    pytest.skip(message)


# --- reading YAML and running docker-compose ---------------------------------------------------


def yaml_interpreter() -> list[str] | None:
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
    command = yaml_interpreter()
    if command is None:
        unavailable("no Python with PyYAML to read YAML (install docker-compose or pyyaml)")
        raise AssertionError  # unreachable: _unavailable raises
    done = subprocess.run(
        command, input=text, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, f"YAML does not parse: {done.stderr}"
    return json.loads(done.stdout)


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        unavailable(
            "docker-compose is not installed"
            " (apt-get install -y --no-install-recommends docker-compose)"
        )
        raise AssertionError  # unreachable
    return found


@cache
def run_config(env_items: tuple[tuple[str, str], ...], empty_env_file: str) -> tuple[str, str]:
    """`docker-compose config` with only `env_items` (and PATH) in the environment and an empty
    env file, so neither the caller's shell nor a local .env changes the result."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path(empty_env_file).parent),
    }
    env.update(dict(env_items))
    done = subprocess.run(
        [
            compose_binary(),
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


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of each volume of a service (short or long syntax)."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found[volume["target"]] = volume.get("source", "")
        else:
            source, target = str(volume).split(":")[:2]
            found[target] = source
    return found
