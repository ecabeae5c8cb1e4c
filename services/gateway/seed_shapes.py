"""The seed application's JSON shapes, rendered from the same `JobView` gRPC uses.

The seed spoke camelCase and lower-case statuses; its clients keep working unchanged.
"""

from __future__ import annotations

from typing import Any

from common.domain.states import JobStatus
from common.errors import InvalidArgument
from services.gateway.views import JobView

# Seed status words; "processing" is what the seed reported while segments were generated.
SEED_STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "processing",
    JobStatus.COMPLETED: "completed",
    JobStatus.PARTIALLY_FAILED: "partially_failed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}

# Our field names -> the seed's request keys, so an error names what the client sent.
SEED_FIELDS = {
    "battle_arena_url": "battleArenaUrl",
    "total_segments": "totalSegments",
    "segment_prompts": "segmentPrompts",
    "idempotency_key": "idempotencyKey",
    "job_id": "sessionId",
}


def seed_field_error(exc: InvalidArgument) -> dict[str, Any]:
    field = SEED_FIELDS.get(exc.field, exc.field)
    return {"error": f"{field}: {exc.reason}", "field": field}


def seed_status(view: JobView) -> dict[str, Any]:
    return {
        "status": SEED_STATUS[view.status],
        "currentSegment": view.finished_tasks,
        "totalSegments": view.total_segments,
        "message": view.job.message,
        "recoverable": view.status.terminal and view.recoverable,
        "warning": view.job.warning or None,
    }
