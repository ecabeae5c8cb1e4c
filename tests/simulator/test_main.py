"""`python -m services.simulator`: settings from the environment, start line, clean SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys

import httpx
import pytest

from common.collector import GC_YOUNG_THRESHOLD
from services.simulator.__main__ import serve
from services.simulator.config import ConfigError, SimulatorConfig, config_from_env, parse_addr


def test_config_from_env() -> None:
    config = config_from_env(
        {
            "SIM_LATENCY": "0.5",
            "SIM_CHAT_LATENCY": "0",
            "SIM_SEED": "9",
            "SIM_FAL_KEY": "fal-secret",
            "SIM_CONFIG": '{"max_concurrency": 3, "latency": 7}',
        }
    )

    assert config.latency == 0.5  # the single variable wins over SIM_CONFIG
    assert config.chat_latency == 0
    assert config.seed == 9
    assert config.max_concurrency == 3
    assert config.fal_key is not None
    assert config.fal_key.get_secret_value() == "fal-secret"
    assert config.openai_key is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SIM_LATENCY": "soon"}, "SIM_LATENCY"),
        ({"SIM_LATENCY": "-1"}, "SIM_LATENCY"),
        ({"SIM_SEED": "1.5"}, "SIM_SEED"),
        ({"SIM_CONFIG": "{"}, "SIM_CONFIG"),
        ({"SIM_CONFIG": '{"max_concurrency": -1}'}, "SIM_CONFIG"),
        ({"SIM_PUBLIC_URL": "sim:8100"}, "SIM_PUBLIC_URL"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config_from_env(env)


def test_parse_addr() -> None:
    assert parse_addr("0.0.0.0:8100") == ("0.0.0.0", 8100)
    assert parse_addr("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ConfigError, match="SIMULATOR_ADDR"):
        parse_addr("8100")


async def test_process_logs_its_url_and_stops_on_sigterm(unused_tcp_port: int) -> None:
    env = {
        **os.environ,
        "SIMULATOR_ADDR": f"127.0.0.1:{unused_tcp_port}",
        "SIM_FAL_KEY": "fal-very-secret",
        "SIM_OPENAI_KEY": "sk-very-secret",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.simulator",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(20):
            first_line = (await process.stderr.readline()).decode()
        url = f"http://127.0.0.1:{unused_tcp_port}"
        assert url in first_line
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/_sim/health")).status_code == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = (await process.stderr.read()).decode()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert "very-secret" not in first_line + rest


async def test_serving_settles_the_collector(unused_tcp_port: int) -> None:
    """Once up, the simulator's collector is tuned like the services': what starting made is
    frozen out of sight and young collections are rarer, so no full collection pauses the
    completions and webhooks it stands in for fal with (a 55 ms pause in the utilisation
    bench made every webhook of a round late)."""
    before = gc.get_threshold()
    serving = asyncio.create_task(serve(SimulatorConfig(), "127.0.0.1", unused_tcp_port))
    try:
        async with httpx.AsyncClient() as http, asyncio.timeout(20):
            while True:
                try:
                    health = await http.get(f"http://127.0.0.1:{unused_tcp_port}/_sim/health")
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
                    continue
                break
        assert health.status_code == 200
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        gc.unfreeze()
        gc.set_threshold(*before)
