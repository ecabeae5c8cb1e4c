"""Fixtures: a real simulator on port 0 inside the test's event loop, and clients for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SimulatorConfig

APP = "fal-ai/kling-video/v1/standard/image-to-video"


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def config() -> SimulatorConfig:
    """Short latencies; tests override fields with `config.merged(...)` or `sim.configure`."""
    return SimulatorConfig(latency=0.05, chat_latency=0.0, hang_seconds=0.5, seed=7)


@pytest.fixture
async def sim(config: SimulatorConfig) -> AsyncIterator[SimulatorHandle]:
    async with run_simulator(config) as handle:
        yield handle


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def manual_sim(config: SimulatorConfig, clock: ManualClock) -> AsyncIterator[SimulatorHandle]:
    """A simulator whose generations advance only with `clock.advance(...)`."""
    async with run_simulator(config.merged({"latency": 10.0}), clock=clock) as handle:
        yield handle


@pytest.fixture
async def http(sim: SimulatorHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5.0) as client:
        yield client


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition that has no event to await (e.g. a generation finishing on time)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
