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
from services.gateway.http_guard import (
    HttpGuard,
    caller_of,
    error_body,
    error_response,
    parse_json,
)
from services.gateway.http_models import StoryRetry, StoryStart, parse
from services.gateway.requests import StoryJobRequest
from services.gateway.seed_shapes import SEED_STATUS
from services.gateway.views import JobView

JSON_LIMIT = 1 << 20


def _error(exc: OrchestratorError) -> web.Response:
    return error_response(exc, {"success": False, **error_body(exc)})


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


def add_story_routes(app: web.Application, core: JobsCore, guard: HttpGuard) -> None:
    async def generate(request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            body = parse(StoryStart, parse_json(await guard.read_body(request, limit=JSON_LIMIT)))
            view, _ = await core.start_story(
                StoryJobRequest(
                    idea=body.idea,
                    total_segments=body.total_segments,
                    segments_per_set=body.segments_per_set,
                    save_to_files=body.save_to_files,
                    output_directory=body.output_directory,
                    model=body.model,
                    idempotency_key=body.idempotency_key,
                ),
                caller,
            )
            if body.wait_seconds is not None:
                view = await core.wait_finished(view.job.id, body.wait_seconds, caller)
            return _answer(view)
        except OrchestratorError as exc:
            return _error(exc)

    async def retry(request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            body = parse(StoryRetry, parse_json(await guard.read_body(request, limit=JSON_LIMIT)))
            view = await core.get(body.job_id, caller, with_tasks=False)
            if view.job.kind != JobKind.STORY:
                raise InvalidArgument("job_id", f"job {body.job_id} is not a story job")
            outcome = await core.retry_failed(
                body.job_id,
                body.max_retries,
                caller,
                indices=body.task_indices or (),
                regenerate=body.regenerate,
            )
            view = await core.get(body.job_id, caller)
            if body.wait_seconds is not None and outcome.retried:
                view = await core.wait_finished(body.job_id, body.wait_seconds, caller)
            answer = story_result(view)
            answer["retried_sets"] = [i for i in outcome.retried if i != 0]
            answer["message"] = outcome.message
            return web.json_response(answer, status=200 if view.status.terminal else 202)
        except OrchestratorError as exc:
            return _error(exc)

    async def show(request: web.Request) -> web.Response:
        try:
            view = await core.get(request.match_info["job_id"], caller_of(request))
            if view.job.kind != JobKind.STORY:
                raise NotFound(f"job_id: {view.job.id} is not a story job")
            return _answer(view)
        except OrchestratorError as exc:
            return _error(exc)

    app.router.add_post("/generate-movie-auto", generate)
    app.router.add_post("/retry-failed-story-sets", retry)
    app.router.add_get("/story-jobs/{job_id}", show)
