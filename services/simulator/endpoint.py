"""What every simulated endpoint shares: call accounting, auth, and transport-level faults."""

from __future__ import annotations

import functools
import hmac
import logging
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from services.simulator.config import ECHO_KEY, RESET, TIMEOUT, Endpoint
from services.simulator.errors import fal_error, openai_error
from services.simulator.faults import Fault
from services.simulator.state import SimulatorState
from services.simulator.stats import ChatExcerpt

logger = logging.getLogger(__name__)

STATE = web.AppKey("simulator_state", SimulatorState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[int, Fault], web.StreamResponse]


@dataclass
class CallInfo:
    """Filled in by a handler; recorded in the stats when it answers."""

    fault: Fault | None = None
    request_id: str | None = None
    chat: ChatExcerpt | None = None


CALL = web.RequestKey("simulator_call", CallInfo)


def endpoint(name: Endpoint) -> Callable[[Handler], Handler]:
    """Count the call on arrival and record its answer (status, fault, request id) when done.

    Arrival and answer are recorded apart so a call held by a `timeout` fault is already
    visible in `calls` while it hangs.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            state = request.app[STATE]
            info = CallInfo()
            request[CALL] = info
            arrived = state.clock()
            stats = state.stats  # a call that spans a reset stays out of the fresh stats
            stats.record_arrival(name)
            status: int | None = 500  # what aiohttp answers if the handler raises
            try:
                response = await handler(request)
                status = response.status
                return response
            finally:
                fault = info.fault.label if info.fault else None
                if info.fault and info.fault.kind == RESET:
                    status = None
                stats.record_answer(
                    t=arrived,
                    endpoint=name,
                    status=status,
                    fault=fault,
                    request_id=info.request_id,
                    chat=info.chat,
                )
                logger.debug("%s %s -> %s (fault %s)", name, request.path, status, fault)

        return wrapped

    return decorate


def public_base(request: web.Request) -> str:
    """The base of URLs the simulator hands out: `public_base_url`, else the one the client used."""
    return request.app[STATE].config.public_base_url or f"{request.scheme}://{request.host}"


def authorized(request: web.Request, key: SecretStr | None, scheme: str) -> bool:
    """Whether the Authorization header carries `<scheme> <key>` (always, if no key is set)."""
    if key is None:
        return True
    expected = f"{scheme} {key.get_secret_value()}".encode()
    return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)


async def answer_fault(
    request: web.Request, fault: Fault, error: ErrorRenderer
) -> web.StreamResponse | None:
    """Answer a transport-level or status fault; None for faults the endpoint applies itself."""
    request[CALL].fault = fault
    state = request.app[STATE]
    if fault.kind == RESET:
        return drop_connection(request)
    if fault.kind == TIMEOUT:
        await state.pause(state.config.hang_seconds)
        return error(504, fault)
    if fault.kind == ECHO_KEY:
        presented = request.headers.get("Authorization", "")
        if request.path.startswith("/v1/"):
            return openai_error(
                401,
                message=f"Incorrect API key provided: {presented}.",
                code="invalid_api_key",
                request_id=str(uuid.uuid4()),
            )
        return fal_error(401, f"Invalid credentials: {presented}")
    if fault.status is not None:
        return error(fault.status, fault)
    return None


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Reset the TCP connection (RST, no HTTP response); the returned response is never sent."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 turns close into an RST, as a crashing proxy would send.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response()
