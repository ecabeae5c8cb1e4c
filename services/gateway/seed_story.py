"""The seed's story endpoints on the HTTP side port, driven by the same core as gRPC.

  POST /generate-movie-auto       start a story job; by default waits for the result like the seed
                                  did (up to `timeout_seconds`, at most SEED_WAIT_LIMIT); with
                                  "wait": false answers 202 at once with the job id
  POST /retry-failed-story-sets   RetryFailed for a story job, same waiting rules
  GET  /story-jobs/{job_id}       the result shape for a job, at once

Result shape (as the seed returned it): {"success", "job_id", "status", "result": {"success",
"story_title", "generation_summary", "retry_info", "sets": [...], ...}}. A job still running when
the wait ends is answered 202 with "status": "processing" and the partial result.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common.domain.states import JobKind, TaskStatus
from common.errors import InvalidArgument, NotFound, OrchestratorError
from services.gateway.core import JobsCore
from services.gateway.requests import StoryJobRequest
from services.gateway.seed_shapes import SEED_STATUS
from services.gateway.views import JobView

SEED_WAIT_LIMIT = 600.0
DEFAULT_WAIT = 300.0


def _error(exc: OrchestratorError) -> web.Response:
    status = 404 if isinstance(exc, NotFound) else 400
    body: dict[str, Any] = {"success": False, "error": str(exc)}
    if isinstance(exc, InvalidArgument):
        body["field"] = exc.field
    return web.json_response(body, status=status)


def story_result(view: JobView) -> dict[str, Any]:
    job, plan, params = view.job, view.plan, view.story
    summary = view.story_summary()
    sets = []
    for t in view.output_tasks:
        result = t.result or {}
        status = TaskStatus(t.status)
        entry: dict[str, Any] = {
            "set_number": t.index,
            "status": "success"
            if status is TaskStatus.SUCCEEDED
            else ("failed" if status.terminal else "pending"),
            "segments_count": int(result.get("segments_count", 0)),
        }
        if result.get("file_path"):
            entry["file_path"] = result["file_path"]
        if status is TaskStatus.SUCCEEDED:
            entry["segments"] = result.get("segments", [])
        elif status.terminal:
            entry["error"] = t.last_error
        sets.append(entry)
    finished_ok = view.status.terminal and not summary["generation_summary"]["failed_sets"]
    return {
        "success": finished_ok,
        "job_id": job.id,
        "status": SEED_STATUS[view.status],
        "result": {
            "success": finished_ok,
            "story_title": plan.title,
            "logline": plan.logline,
            "characters": plan.characters,
            "idea": params.idea,
            "output_directory": params.output_directory if params.save_to_files else None,
            "metadata_file": plan.metadata_file or None,
            **summary,
            "sets": sets,
            "message": job.message,
        },
    }


def _answer(view: JobView) -> web.Response:
    return web.json_response(story_result(view), status=200 if view.status.terminal else 202)


def _wait_seconds(body: dict[str, Any]) -> float | None:
    """None: answer at once; else how long to wait for the result."""
    if body.get("wait", True) is False:
        return None
    value = body.get("timeout_seconds", DEFAULT_WAIT)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= SEED_WAIT_LIMIT
    ):
        raise InvalidArgument("timeout_seconds", f"must be a number in (0, {SEED_WAIT_LIMIT:.0f}]")
    return float(value)


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(key, f"must be true or false, got {value!r}")
    return value


def _int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(key, f"must be an integer, got {value!r}")
    return value


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgument("body", "must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    return body


def add_story_routes(app: web.Application, core: JobsCore) -> None:
    async def generate(request: web.Request) -> web.Response:
        try:
            body = await _json(request)
            wait = _wait_seconds(body)
            view, _ = await core.start_story(
                StoryJobRequest(
                    idea=str(body.get("idea") or ""),
                    total_segments=_int(body, "total_segments", 0),
                    segments_per_set=_int(body, "segments_per_set", 0),
                    save_to_files=_bool(body, "save_to_files"),
                    output_directory=str(body.get("output_directory") or ""),
                    model=str(body.get("model") or ""),
                    idempotency_key=str(body.get("idempotency_key") or ""),
                )
            )
            if wait is not None:
                view = await core.wait_finished(view.job.id, wait)
            return _answer(view)
        except OrchestratorError as exc:
            return _error(exc)

    async def retry(request: web.Request) -> web.Response:
        try:
            body = await _json(request)
            wait = _wait_seconds(body)
            job_id = str(body.get("job_id") or "")
            view = await core.get(job_id, with_tasks=False)
            if view.job.kind != JobKind.STORY:
                raise InvalidArgument("job_id", f"job {job_id} is not a story job")
            outcome = await core.retry_failed(job_id, _int(body, "max_retries", 0))
            view = await core.get(job_id)
            if wait is not None and outcome.retried:
                view = await core.wait_finished(job_id, wait)
            answer = story_result(view)
            answer["retried_sets"] = [i for i in outcome.retried if i != 0]
            answer["message"] = outcome.message
            return web.json_response(answer, status=200 if view.status.terminal else 202)
        except OrchestratorError as exc:
            return _error(exc)

    async def show(request: web.Request) -> web.Response:
        try:
            view = await core.get(request.match_info["job_id"])
            if view.job.kind != JobKind.STORY:
                raise NotFound(f"job_id: {view.job.id} is not a story job")
            return _answer(view)
        except OrchestratorError as exc:
            return _error(exc)

    app.router.add_post("/generate-movie-auto", generate)
    app.router.add_post("/retry-failed-story-sets", retry)
    app.router.add_get("/story-jobs/{job_id}", show)
