"""Errors a caller of the orchestrator can cause, translated to gRPC/HTTP statuses at the edge.

    OrchestratorError
     ├── InvalidArgument      a request field is missing or wrong (names the field)
     ├── NotFound             no such job (or not the caller's)
     ├── FailedPrecondition   the job is not in a state that allows the call
     ├── AlreadyExists        an idempotency key reused with a different request
     ├── Unauthenticated      no, malformed or unknown credentials
     ├── PermissionDenied     the caller's role does not allow the call
     └── ResourceExhausted    the caller exceeded a rate or concurrency limit

Provider failures have their own tree in common.resilience.errors.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of the errors a client's request can cause."""


class InvalidArgument(OrchestratorError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(OrchestratorError, LookupError):
    pass


class FailedPrecondition(OrchestratorError):
    pass


class AlreadyExists(OrchestratorError):
    pass


class Unauthenticated(OrchestratorError):
    pass


class PermissionDenied(OrchestratorError):
    pass


class ResourceExhausted(OrchestratorError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
