"""Shared resilience layer: error tree and classification, backoff, circuit breaker, retry policy.

Free of provider SDKs: adapters translate fal-client / openai / httpx exceptions into
`TransientError` / `PermanentError` with the `classify` helpers.
"""

from common.resilience.backoff import Backoff
from common.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    Permit,
)
from common.resilience.classify import (
    MAX_MESSAGE_CHARS,
    RETRYABLE_STATUSES,
    connection_error,
    error_from_status,
    is_retryable_status,
    parse_retry_after,
    scrub,
    timeout_error,
)
from common.resilience.errors import (
    CircuitOpenError,
    ErrorClass,
    PermanentError,
    ProviderError,
    TransientError,
)
from common.resilience.guard import call_with_breaker, call_with_permit
from common.resilience.policy import Decision, GiveUp, Retry, RetryPolicy
from common.resilience.registry import BreakerRegistry

__all__ = [
    "MAX_MESSAGE_CHARS",
    "RETRYABLE_STATUSES",
    "Backoff",
    "BreakerConfig",
    "BreakerRegistry",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitOpenError",
    "Decision",
    "ErrorClass",
    "GiveUp",
    "PermanentError",
    "Permit",
    "ProviderError",
    "Retry",
    "RetryPolicy",
    "TransientError",
    "call_with_breaker",
    "call_with_permit",
    "connection_error",
    "error_from_status",
    "is_retryable_status",
    "parse_retry_after",
    "scrub",
    "timeout_error",
]
