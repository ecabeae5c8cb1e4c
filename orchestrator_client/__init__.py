"""A typed async client of the generation orchestrator (`orchestrator.v1.JobService`).

Free of `services.*`: internal services and tools import it like any caller would.
"""

from orchestrator_client.client import (
    DEFAULT_BACKOFF,
    JobsClient,
    ServingStatus,
    StartedJob,
    new_idempotency_key,
)
from orchestrator_client.connection import DEFAULT_TARGET
from orchestrator_client.errors import (
    AccessDenied,
    AlreadyExists,
    ClientError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RefusedError,
    ResourceExhausted,
    ServerError,
    TransientError,
    Unauthenticated,
    Unavailable,
    UploadError,
)
from orchestrator_client.uploads import DEFAULT_HTTP_URL, upload_image
from orchestrator_client.watching import Reconnect, WatchItem

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_HTTP_URL",
    "DEFAULT_TARGET",
    "AccessDenied",
    "AlreadyExists",
    "ClientError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "JobsClient",
    "NotFound",
    "PermissionDenied",
    "Reconnect",
    "RefusedError",
    "ResourceExhausted",
    "ServerError",
    "ServingStatus",
    "StartedJob",
    "TransientError",
    "Unauthenticated",
    "Unavailable",
    "UploadError",
    "WatchItem",
    "new_idempotency_key",
    "upload_image",
]
