"""Chaos fixtures: a fresh queue prefix, a database (SQLite file or a fresh PostgreSQL one), the
simulator in the test's loop, and a private RabbitMQ node the suite may stop and start (the
shared broker on 5672 is never touched)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.broker import Topology, delete_topology
from common.domain.kinds import BUILTIN_KINDS
from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SLOW_RESPONSE, Rule, SimulatorConfig
from tests.support.databases import fresh_postgres
from tests.support.stack import FAL_KEY, OPENAI_KEY

PRIVATE_PORT = 5673
PRIVATE_NODE = "chaos@localhost"


@pytest.fixture
async def chaos_sim() -> AsyncIterator[SimulatorHandle]:
    """The simulator, with every fal submit answered 1.5 s after fal accepted it.

    A plain submit is in flight only a few ms once its commits are quick, so a test looking for a
    video worker mid-submit every 50 ms (`Chaos.in_flight`) could miss every one of them; held
    answers also make a kill land between payment and record.
    """
    config = SimulatorConfig(
        latency=1.0,
        chat_latency=1.0,
        hang_seconds=1.5,
        rules=[Rule(endpoint="submit", fault=SLOW_RESPONSE)],
        fal_key=FAL_KEY,
        openai_key=OPENAI_KEY,
    )
    async with run_simulator(config) as handle:
        yield handle


@pytest.fixture
async def prefix(amqp_url: str) -> AsyncIterator[str]:
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    yield name
    await delete_topology(amqp_url, Topology(prefix=name, queues=BUILTIN_KINDS.queues))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/chaos.db"


@pytest.fixture(params=["postgres", "sqlite"])
async def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL database, or a SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/chaos.db"
        return
    async with fresh_postgres(request.getfixturevalue("postgres_url"), "orch_chaos") as url:
        yield url


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of the suite's own (see shared/testing.md)."""

    url: str
    env: dict[str, str]

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", PRIVATE_NODE, *args],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    async def stop(self) -> None:
        await asyncio.to_thread(self._ctl, "stop_app")

    async def start(self) -> None:
        await asyncio.to_thread(self._ctl, "start_app")
        await wait_port(PRIVATE_PORT, open_=True)


async def wait_port(port: int, *, open_: bool, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while _port_open(port) != open_:
            await asyncio.sleep(0.2)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def private_rabbit() -> Iterator[PrivateRabbit]:
    if shutil.which("rabbitmq-server") is None:
        message = "rabbitmq-server is not installed"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's tmp dir: the node runs as the rabbitmq user, who cannot enter it.
    base = Path(tempfile.mkdtemp(prefix="rmq-chaos-", dir="/tmp"))
    base.chmod(0o755)
    (base / "mnesia").mkdir()
    (base / "log").mkdir()
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{PRIVATE_PORT}\n")
    subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(base)], check=False)
    for path in (base, base / "enabled_plugins", base / "rabbitmq.conf"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": PRIVATE_NODE,
        "RABBITMQ_NODE_PORT": str(PRIVATE_PORT),
        "RABBITMQ_DIST_PORT": "25673",
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
    }
    if _port_open(PRIVATE_PORT):  # a node left over from an interrupted run
        subprocess.run(
            ["rabbitmqctl", "-n", PRIVATE_NODE, "stop"], env=env, check=False, timeout=60
        )
    subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60)
    rabbit = PrivateRabbit(f"amqp://guest:guest@127.0.0.1:{PRIVATE_PORT}/", env)
    asyncio.run(wait_port(PRIVATE_PORT, open_=True, timeout=90))
    try:
        yield rabbit
    finally:
        subprocess.run(
            ["rabbitmqctl", "-n", PRIVATE_NODE, "stop"], env=env, check=False, timeout=120
        )
