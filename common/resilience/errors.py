"""The resilience layer's exception tree and error classes.

    Exception
     ├── ProviderError            a provider call failed (provider, error_class, status_code,
     │    │                       retry_after, message)
     │    ├── TransientError      retryable: waiting and calling again may succeed
     │    └── PermanentError      not retryable: the same call would fail the same way
     └── CircuitOpenError         the breaker refused the call before it was made (name, retry_in)

Adapters translate provider exceptions (fal-client, openai, httpx) into this tree with the helpers
in `common.resilience.classify`; nothing above the adapters sees a provider's own exception type.
`CircuitOpenError` is deliberately not a `ProviderError`: no call happened, so a task that meets it
is deferred, not failed, and is not charged an attempt.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorClass(StrEnum):
    """Why a task failed. The values are stored in the database and mapped to a proto enum."""

    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER_ERROR = "server_error"
    UNPROCESSABLE = "unprocessable"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    QUOTA = "quota"
    INVALID_OUTPUT = "invalid_output"
    PROVIDER_FAILED = "provider_failed"
    INTERNAL = "internal"
    DEPENDENCY_FAILED = "dependency_failed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OUTPUT = "output"


class ProviderError(Exception):
    """A provider call failed. Raise `TransientError` or `PermanentError`, never this base.

    `message` must not contain secrets: build it with `classify.scrub` (the `classify` factories
    do). `retry_after` is the provider's requested wait in seconds, already parsed, or None.
    """

    retryable: ClassVar[bool]

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        error_class: ErrorClass,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if type(self) is ProviderError:
            # `retryable` is what every caller branches on; the base has no answer.
            raise TypeError("raise TransientError or PermanentError, not ProviderError")
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.error_class = error_class
        self.status_code = status_code
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, provider={self.provider!r}, "
            f"error_class={self.error_class.value!r}, status_code={self.status_code!r}, "
            f"retry_after={self.retry_after!r})"
        )


class TransientError(ProviderError):
    """A failure that waiting may cure: rate limits, timeouts, dropped connections, 5xx."""

    retryable = True


class PermanentError(ProviderError):
    """A failure that repeating the same call will not cure: bad input, auth, quota, 404."""

    retryable = False


class CircuitOpenError(Exception):
    """The circuit breaker `name` refused the call; calls may be let through in `retry_in` s."""

    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_in:.1f}s")
        self.name = name
        self.retry_in = retry_in
