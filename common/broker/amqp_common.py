"""Small AMQP-side helpers: what counts as a broker failure, timeouts, safe names for logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from urllib.parse import urlsplit

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

log = logging.getLogger(__name__)

# AMQPError: nacks, returns, closed channels/connections. OSError: sockets and timeouts
# (TimeoutError is one). ChannelInvalidStateError: aiormq's "channel already closed", a
# RuntimeError subclass.
BROKER_FAILURES: tuple[type[Exception], ...] = (AMQPError, OSError, ChannelInvalidStateError)

# Bound on every declare/consume/cancel round trip: an unresponsive broker is an error, not a hang.
RPC_TIMEOUT = 10.0


async def quietly(what: str, operation: Awaitable[object]) -> None:
    """Run a best-effort teardown step, bounded by RPC_TIMEOUT; failures are logged, not raised.

    Needed because robust channels wait for the connection to be ready before any RPC, which
    never happens once the connection is closed or while it is down.
    """
    try:
        async with asyncio.timeout(RPC_TIMEOUT):
            await operation
    except BROKER_FAILURES as exc:
        log.warning("%s failed: %r", what, exc)


def redact(url: str) -> str:
    """`url` without credentials, fit for logs and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
