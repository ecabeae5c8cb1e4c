"""What can go wrong when calling the orchestrator, as one exception tree.

    ClientError                      base; `code` is the gRPC status (None for HTTP/local errors)
     ├── TransientError              worth trying again later (the client already retried)
     │    ├── Unavailable            the gateway is unreachable, restarting or draining
     │    ├── DeadlineExceeded       no answer within the call's timeout
     │    └── ResourceExhausted      a rate or concurrency limit; `retry_after` when the server said
     ├── RefusedError                the gateway answered and said no; retrying will not help
     │    ├── AccessDenied
     │    │    ├── Unauthenticated   no, malformed or unknown token
     │    │    └── PermissionDenied  the token's role does not allow the call
     │    ├── InvalidArgument        a request field is wrong (the message names it)
     │    ├── NotFound               no such job
     │    ├── FailedPrecondition     the job's state does not allow the call
     │    └── AlreadyExists          an idempotency key reused with a different request
     ├── ServerError                INTERNAL, UNKNOWN, UNIMPLEMENTED, ... (a bug or a mismatch)
     └── UploadError                 the HTTP upload route refused or failed (`http_status`)

Messages carry the server's words; the client's token is scrubbed from them and never part of
an exception's repr.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import grpc


class ClientError(Exception):
    """Base of every error `orchestrator_client` raises."""

    code: grpc.StatusCode | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class TransientError(ClientError):
    """The call may succeed later; the client's own retries are already spent."""


class Unavailable(TransientError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TransientError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(TransientError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefusedError(ClientError):
    """The gateway understood the call and refused it."""


class AccessDenied(RefusedError):
    """Authentication or authorisation refused."""


class Unauthenticated(AccessDenied):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AccessDenied):
    code = grpc.StatusCode.PERMISSION_DENIED


class InvalidArgument(RefusedError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RefusedError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RefusedError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(RefusedError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ServerError(ClientError):
    """Any other status: an internal error at the gateway or a client/server mismatch."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class UploadError(ClientError):
    """The gateway's upload route refused the file (4xx) or failed (5xx, transport)."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status

    @property
    def refused(self) -> bool:
        """A 4xx answer: the file or the request is wrong, sending it again will not help."""
        return self.http_status is not None and 400 <= self.http_status < 500


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    cls.code: cls
    for cls in (
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        AlreadyExists,
    )
    if cls.code is not None
}


def scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced, so a token echoed by a server or proxy never surfaces."""
    return text.replace(secret, "***") if secret else text


def from_rpc_error(exc: grpc.aio.AioRpcError, *, token: str | None = None) -> ClientError:
    """The exception for a failed call, with the server's message (token scrubbed)."""
    code = exc.code()
    message = scrub(exc.details() or code.name, token)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message, retry_after=_retry_after(exc))
    cls = _BY_CODE.get(code)
    if cls is None:
        return ServerError(f"{code.name}: {message}", code)
    return cls(message)


def _retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    metadata = cast("Iterable[tuple[str, str | bytes]]", exc.trailing_metadata() or ())
    for key, value in metadata:
        if key.lower() == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None
