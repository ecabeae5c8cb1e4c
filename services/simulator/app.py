"""The simulator as one aiohttp application, and a context manager that serves it in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.simulator.admin import add_admin_routes
from services.simulator.config import Clock, SimulatorConfig
from services.simulator.endpoint import STATE
from services.simulator.fal_keys import add_key_routes
from services.simulator.fal_routes import add_fal_routes
from services.simulator.fal_storage import add_storage_routes
from services.simulator.openai_chat import add_openai_routes
from services.simulator.state import SimulatorState

# Held answers wake up on shutdown, so in-flight calls finish well within this.
SHUTDOWN_TIMEOUT = 5.0


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Own the webhook session and the queue pump for the life of the app."""
    state = app[STATE]
    await state.webhooks.start()
    pump = asyncio.create_task(state.queue.run(), name="sim-queue-pump")
    try:
        yield
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        await state.webhooks.aclose()


async def _wake_held_calls(app: web.Application) -> None:
    app[STATE].stopping.set()


def create_app(
    config: SimulatorConfig | None = None, *, clock: Clock | None = None
) -> web.Application:
    """The aiohttp application: fal queue API, OpenAI API under /v1, fal storage (/storage,
    /files/upload, /cdn), webhook keys (/.well-known/jwks.json), admin under /_sim, videos
    under /files."""
    state = SimulatorState(config or SimulatorConfig(), clock=clock)
    app = web.Application()
    app[STATE] = state
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_wake_held_calls)
    add_admin_routes(app)
    add_openai_routes(app)
    add_storage_routes(app)
    add_key_routes(app)
    add_fal_routes(app)  # catch-all routes last
    return app


@dataclass(frozen=True)
class SimulatorHandle:
    """A running simulator: its base URL and direct access to its state."""

    url: str
    state: SimulatorState

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Same as POST /_sim/config (raises pydantic.ValidationError on bad input)."""
        return self.state.configure(**changes)

    def reset(self) -> None:
        """Same as POST /_sim/reset."""
        self.state.reset()

    def rotate_webhook_key(self, *, keep_previous: bool = True) -> str:
        """Same as POST /_sim/webhook_keys/rotate: sign webhooks with a new key; its kid."""
        return self.state.signer.rotate(keep_previous=keep_previous)

    def stats(self, *, with_logs: bool = True, with_timeline: bool = False) -> dict[str, Any]:
        """Same as GET /_sim/stats."""
        return self.state.snapshot(with_logs=with_logs, with_timeline=with_timeline)


@contextlib.asynccontextmanager
async def run_simulator(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
) -> AsyncIterator[SimulatorHandle]:
    """Serve the simulator inside the running event loop; port 0 picks a free port."""
    app = create_app(config, clock=clock)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        yield SimulatorHandle(url=f"http://{shown_host}:{bound_port}", state=app[STATE])
    finally:
        await runner.cleanup()
