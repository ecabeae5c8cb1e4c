"""What counts as "the broker failed" on the AMQP side, and how to name a broker in logs."""

from __future__ import annotations

from urllib.parse import urlsplit

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

# AMQPError: nacks, returns, closed channels/connections. OSError: sockets and timeouts.
# ChannelInvalidStateError: aiormq's "channel already closed", a RuntimeError subclass.
BROKER_FAILURES: tuple[type[Exception], ...] = (AMQPError, OSError, ChannelInvalidStateError)


def redact(url: str) -> str:
    """`url` without credentials, fit for logs and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
