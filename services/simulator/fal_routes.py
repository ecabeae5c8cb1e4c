"""The fal queue API on the wire: submit, status, result, cancel, and the fake video files.

Shapes follow what fal-client 1.0.3 sends and parses (see shared/providers.md): URLs in the
submit answer are the way back to a request, a failed generation is COMPLETED with a 422
result, and errors are `{"detail": ...}`.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.simulator.config import GENERATION_FAILED, SLOW_RESPONSE, Endpoint
from services.simulator.endpoint import (
    CALL,
    STATE,
    ErrorRenderer,
    answer_fault,
    authorized,
    endpoint,
    public_base,
)
from services.simulator.errors import fal_error, fal_ingress_error, fal_validation_error
from services.simulator.fal_queue import (
    GENERATION_ERROR,
    Outcome,
    Priority,
    QueuedRequest,
    QueueStatus,
)
from services.simulator.faults import Fault
from services.simulator.state import SimulatorState

PRIORITY_HEADER = "X-Fal-Queue-Priority"
NAMESPACES = frozenset({"workflows", "comfy"})  # app ids whose route keeps three parts
# Our own route roots (admin, OpenAI, videos, fal storage and CDN), never fal apps.
RESERVED = frozenset({"_sim", "v1", "files", "storage", "cdn", ".well-known"})
INGRESS_STATUSES = frozenset({502, 503, 504})


def route_prefix(app_id: str) -> str | None:
    """The part of an app id its request URLs live under (fal: owner/alias), or None."""
    parts = app_id.split("/")
    if len(parts) < 2 or "" in parts or parts[0] in RESERVED:
        return None
    keep = 3 if parts[0] in NAMESPACES and len(parts) >= 3 else 2
    return "/".join(parts[:keep])


def _fault_error(request_id: str | None) -> ErrorRenderer:
    def render(status: int, fault: Fault) -> web.StreamResponse:
        if fault.ingress and status in INGRESS_STATUSES:
            return fal_ingress_error(status, retry_after=fault.retry_after)
        return fal_error(status, request_id=request_id, retry_after=fault.retry_after)

    return render


def _unauthorized() -> web.Response:
    return fal_error(401, "No user found for Key ID and Secret")


@endpoint("submit")
async def submit(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if not authorized(request, state.config.fal_key, "Key"):
        return _unauthorized()
    app_id = request.match_info["app_id"]
    prefix = route_prefix(app_id)
    if prefix is None:
        return fal_error(404, f"Application '{app_id}' not found")
    body_text = await request.text()
    fault = state.decide_fault("submit", body_text)
    if fault and (answer := await answer_fault(request, fault, _fault_error(None))):
        return answer

    try:
        arguments = json.loads(body_text)
    except ValueError:
        return fal_validation_error("Input should be a valid JSON object", "json_invalid")
    if not isinstance(arguments, dict):
        return fal_validation_error("Input should be a valid dictionary", "dict_type")
    raw_priority = request.headers.get(PRIORITY_HEADER, "normal")
    if raw_priority not in ("normal", "low"):
        return fal_error(400, f"Invalid queue priority {raw_priority!r}: use 'normal' or 'low'")
    priority: Priority = "low" if raw_priority == "low" else "normal"
    webhook_url = request.query.get("fal_webhook")
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        return fal_error(400, "fal_webhook must be an http(s) URL")

    request_id = state.new_id()
    seed = arguments.get("seed")
    queued = QueuedRequest(
        request_id=str(request_id),
        app_id=app_id,
        route_prefix=prefix,
        base_url=public_base(request),
        arguments=arguments,
        body_text=body_text,
        webhook_url=webhook_url,
        priority=priority,
        latency=state.draw_latency(),
        fails=fault is not None and fault.kind == GENERATION_FAILED,
        # Like fal apps: the input seed is echoed, else one is picked.
        seed=seed if isinstance(seed, int) else request_id.int % 2**31,
        file_size=state.config.video_file_size,
        submitted_at=state.clock(),
    )
    position = state.queue.submit(queued)
    state.stats.record_accepted(arguments)
    request[CALL].request_id = queued.request_id
    if fault and fault.kind == SLOW_RESPONSE:
        await state.pause(state.config.hang_seconds)
    url = queued.request_url
    return web.json_response(
        {
            "request_id": queued.request_id,
            "response_url": url,
            "status_url": f"{url}/status",
            "cancel_url": f"{url}/cancel",
            "queue_position": position,
        }
    )


async def _find(
    request: web.Request, state: SimulatorState, endpoint_name: Endpoint
) -> QueuedRequest | web.StreamResponse:
    """The addressed request, or the answer instead of it (auth, fault, unknown id).

    Rules for status/result/cancel match the original submit body of that request.
    """
    if not authorized(request, state.config.fal_key, "Key"):
        return _unauthorized()
    request_id = request.match_info["request_id"]
    queued = state.queue.get(request_id)
    if queued is not None and queued.route_prefix != request.match_info["prefix"]:
        queued = None
    fault = state.decide_fault(endpoint_name, queued.body_text if queued else "")
    if fault and (answer := await answer_fault(request, fault, _fault_error(request_id))):
        return answer
    if queued is None:
        return fal_error(404, "Request not found", request_id=request_id)
    request[CALL].request_id = request_id
    state.queue.advance()
    return queued


async def _finish(
    request: web.Request, state: SimulatorState, response: web.Response
) -> web.Response:
    fault = request[CALL].fault
    if fault and fault.kind == SLOW_RESPONSE:
        await state.pause(state.config.hang_seconds)
    return response


@endpoint("status")
async def status(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    queued = await _find(request, state, "status")
    if not isinstance(queued, QueuedRequest):
        return queued
    with_logs = request.query.get("logs", "0").lower() in {"1", "true"}
    body: dict[str, Any] = {"status": queued.status.value}
    if queued.status is QueueStatus.IN_QUEUE:
        body["queue_position"] = state.queue.position(queued)
    else:
        body["logs"] = _logs(queued, state.clock()) if with_logs else None
    if queued.status is QueueStatus.COMPLETED:
        body["metrics"] = _metrics(queued)
        if queued.outcome is Outcome.FAILED:
            body["error"] = GENERATION_ERROR
            body["error_type"] = "generation_error"
    body["response_url"] = queued.request_url
    code = 200 if queued.status is QueueStatus.COMPLETED else 202
    return await _finish(request, state, web.json_response(body, status=code))


@endpoint("result")
async def result(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    queued = await _find(request, state, "result")
    if not isinstance(queued, QueuedRequest):
        return queued
    rid = queued.request_id
    match queued.outcome:
        case None:
            response = fal_error(400, "Request is still in progress", request_id=rid)
        case Outcome.CANCELLED:
            response = fal_error(400, "Request was cancelled", request_id=rid)
        case Outcome.FAILED:
            response = fal_validation_error(GENERATION_ERROR, "generation_error", request_id=rid)
        case Outcome.OK:
            response = web.json_response(queued.result())
    return await _finish(request, state, response)


@endpoint("cancel")
async def cancel(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    queued = await _find(request, state, "cancel")
    if not isinstance(queued, QueuedRequest):
        return queued
    if state.queue.cancel(queued):
        response = web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
    else:
        response = web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
    return await _finish(request, state, response)


async def video_file(request: web.Request) -> web.StreamResponse:
    """The fake video of a successful generation (deterministic bytes of `file_size`)."""
    name = request.match_info["name"]
    queued = request.app[STATE].queue.get(name.removesuffix(".mp4"))
    if not name.endswith(".mp4") or queued is None or queued.outcome is not Outcome.OK:
        return web.json_response({"detail": "File not found"}, status=404)
    return web.Response(
        body=fake_mp4(queued.request_id, queued.file_size), content_type="video/mp4"
    )


def fake_mp4(request_id: str, size: int) -> bytes:
    """An `ftyp` box then filler derived from the id: same request, same bytes."""
    header = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    return header + hashlib.shake_256(request_id.encode()).digest(size - len(header))


def _metrics(queued: QueuedRequest) -> dict[str, Any]:
    if queued.started_at is None or queued.completed_at is None:
        return {}
    return {"inference_time": round(queued.completed_at - queued.started_at, 3)}


def _logs(queued: QueuedRequest, now: float) -> list[dict[str, Any]]:
    """Progress lines up to now, as a fal app would log them."""
    if queued.started_at is None:
        return []
    until = now if queued.completed_at is None else min(now, queued.completed_at)
    entries = [("Starting video generation", queued.started_at)]
    for percent in (25, 50, 75):
        at = queued.started_at + queued.latency * percent / 100
        if at <= until and not queued.cancelled:
            entries.append((f"Generating video: {percent}%", at))
    if queued.outcome is Outcome.OK:
        entries.append(("Video generated", queued.completed_at or until))
    # Timestamps are wall-clock; the simulation runs on the (monotonic) state clock.
    offset = time.time() - now
    return [
        {
            "message": message,
            "level": "INFO",
            "source": "user",
            "timestamp": datetime.fromtimestamp(at + offset, UTC).isoformat(),
        }
        for message, at in entries
    ]


def add_fal_routes(app: web.Application) -> None:
    """Register the fal routes; they are catch-alls, so register them after every other route."""
    app.router.add_get("/files/{name}", video_file)
    app.router.add_get("/{prefix:.+}/requests/{request_id}/status", status)
    app.router.add_put("/{prefix:.+}/requests/{request_id}/cancel", cancel)
    app.router.add_get("/{prefix:.+}/requests/{request_id}", result)
    app.router.add_post("/{app_id:.+}", submit)
