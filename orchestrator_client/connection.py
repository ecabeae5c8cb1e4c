"""Where and how to reach the gateway: target, TLS and token, read once and checked up front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"

# The channel's own reconnection backoff (gRPC's default grows to 120 s): after a gateway
# restart, calls fail fast with UNAVAILABLE until the channel reconnects, so keep it short.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # GetJob of a 10 000-segment job is a few MB.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Connection:
    """The target and credentials of a client. The token is never part of the repr."""

    target: str = DEFAULT_TARGET
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must be host:port")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if self.token is not None and (not self.token or any(c in self.token for c in "\r\n")):
            raise ValueError("token must be a non-empty single line")

    @property
    def secure(self) -> bool:
        """TLS is on when asked for, or implied by a CA or client certificate."""
        return self.tls or any(f is not None for f in (self.ca_file, self.cert_file))

    def metadata(self) -> Sequence[tuple[str, str]]:
        """Metadata sent with every call."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials; reads the PEM files (missing files fail here, with their path)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )

    def open_channel(self, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        """A channel to the target: TLS with `credentials` (from `credentials()`) if given."""
        options = list(CHANNEL_OPTIONS)
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(self.target, credentials, options=options)


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
