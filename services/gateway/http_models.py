"""Typed bodies of the HTTP routes (pydantic, strict: no silent coercion).

A string is never taken as a list, a number never as text, a bool never as a number; unknown
keys are refused. A bad body is InvalidArgument naming the field as the client spelled it. The
values then go through the same validation as gRPC requests (requests.py, fields.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import InvalidArgument

SEED_WAIT_LIMIT = 600.0
DEFAULT_WAIT = 300.0

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class VideoStart(_Strict):
    action: Literal["start"]
    battleArenaUrl: str = ""
    totalSegments: int | None = None
    prompt: str = ""
    segmentPrompts: list[str] | None = None
    idempotencyKey: str = ""
    maxConcurrency: int = 0
    deadlineSeconds: int = 0
    reuseResults: bool = False


class VideoStatus(_Strict):
    action: Literal["status"]
    sessionId: str = ""


class VideoRetry(_Strict):
    """RetryFailed: what failed, or the chosen segments (`regenerate` re-runs succeeded ones)."""

    action: Literal["retry"]
    sessionId: str = ""
    taskIndices: list[int] | None = None
    regenerate: bool = False
    maxRetries: int = 0


class _Waiting(_Strict):
    wait: bool = True
    timeout_seconds: Annotated[float, Field(gt=0, le=SEED_WAIT_LIMIT)] = DEFAULT_WAIT

    @property
    def wait_seconds(self) -> float | None:
        """None: answer at once; else how long to wait for the result."""
        return self.timeout_seconds if self.wait else None


class StoryStart(_Waiting):
    idea: str = ""
    total_segments: int = 0
    segments_per_set: int = 0
    save_to_files: bool = False
    output_directory: str = ""
    model: str = ""
    idempotency_key: str = ""


class StoryRetry(_Waiting):
    job_id: str = ""
    max_retries: int = 0
    # Sets to re-run (1..N; the plan is 0): only these; `regenerate` re-runs succeeded ones.
    task_indices: list[int] | None = None
    regenerate: bool = False


def parse(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, or InvalidArgument naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        raise InvalidArgument(where, message) from None


def video_action(data: dict[str, Any]) -> VideoStart | VideoStatus | VideoRetry:
    action = data.get("action")
    if action == "start":
        return parse(VideoStart, data)
    if action == "status":
        return parse(VideoStatus, data)
    if action == "retry":
        return parse(VideoRetry, data)
    raise InvalidArgument("action", "must be 'start', 'status' or 'retry'")
