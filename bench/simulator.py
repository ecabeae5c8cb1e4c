"""The provider simulator as its own process, and a small client of its admin API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.probes import http_ok
from bench.procs import ChildProcess, free_port

ADMIN_TIMEOUT = 10.0
# Per-submit bookkeeping the benchmark never reads; left out of the JSON file.
BULKY_STATS = ("submits_by_payload", "call_log", "chat_log")


class Simulator:
    """A running simulator: its base URL, process and admin calls."""

    def __init__(self, url: str, process: ChildProcess, client: httpx.AsyncClient) -> None:
        self.url = url
        self.process = process
        self._client = client

    async def configure(self, **changes: Any) -> dict[str, Any]:
        """POST /_sim/config (merged into the live config)."""
        response = await self._client.post(f"{self.url}/_sim/config", json=changes)
        response.raise_for_status()
        return dict(response.json())

    async def stats(self) -> dict[str, Any]:
        """GET /_sim/stats without the call logs; the per-payload counters are summarised."""
        response = await self._client.get(f"{self.url}/_sim/stats", params={"logs": "false"})
        response.raise_for_status()
        data = dict(response.json())
        data["duplicate_submits"] = len(data.get("duplicate_submits", {}))
        for key in BULKY_STATS:
            data.pop(key, None)
        return data

    async def timeline(self) -> dict[str, Any]:
        """Each accepted request's accept, start and completion times (simulator clock)."""
        response = await self._client.get(
            f"{self.url}/_sim/stats", params={"logs": "false", "timeline": "true"}
        )
        response.raise_for_status()
        return dict(response.json()["timeline"])


def provider_calls(stats: dict[str, Any]) -> int:
    """Calls to the fal queue API (submit, status, result, cancel), faulted ones included."""
    calls = stats.get("calls", {})
    return sum(int(calls.get(e, 0)) for e in ("submit", "status", "result", "cancel"))


@asynccontextmanager
async def running_simulator(
    log_dir: Path, name: str, config: dict[str, Any], log_level: str
) -> AsyncIterator[Simulator]:
    """`python -m services.simulator` on a free port with `config` as SIM_CONFIG."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {
        "SIMULATOR_ADDR": url.removeprefix("http://"),
        # The call log is never read here; keeping none saves the simulator work.
        "SIM_CONFIG": json.dumps({"call_log_limit": 0, **config}),
        "LOG_LEVEL": log_level,
    }
    process = ChildProcess.module(
        name, "services.simulator", env, log_dir, http_ok(f"{url}/_sim/health")
    )
    try:
        await process.start()
        async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT) as client:
            yield Simulator(url, process, client)
    finally:
        await process.stop()
