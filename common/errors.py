"""Errors a caller of the orchestrator can cause, translated to gRPC/HTTP statuses at the edge.

    OrchestratorError
     ├── InvalidArgument      a request field is missing or wrong (names the field)
     ├── NotFound             no such job
     ├── FailedPrecondition   the job is not in a state that allows the call
     └── AlreadyExists        an idempotency key reused with a different request

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
