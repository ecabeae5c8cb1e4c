"""The resolved compose file, shared by the deploy tests (see tests/deploy/compose.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.compose import load_yaml, run_config


@pytest.fixture(scope="session")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return str(path)


@pytest.fixture(scope="session")
def compose_config(empty_env_file: str):
    def config(**env: str) -> dict[str, Any]:
        stdout, _ = run_config(tuple(sorted(env.items())), empty_env_file)
        return load_yaml(stdout)

    return config


@pytest.fixture(scope="session")
def stack(compose_config) -> dict[str, Any]:
    """The resolved compose file with every variable at its default."""
    return compose_config()
