"""The gateway's HTTP side port (aiohttp): the seed-compatible JSON API, fal webhooks, health.

Routes:
  POST /api/generate-video        seed video API: {"action": "start" | "status", ...}
  POST /webhooks/fal              fal's completion call-back: triggers an early poll
  GET  /healthz                   200 while serving, 503 while draining (no token needed)
  GET  /metrics                   Prometheus text format
  (and the story routes of seed_story.py)

Every route goes through the HTTP guard (http_guard.py): tokens, rate, body limits, errors.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from aiohttp import web

from common.domain.messages import MessageKind, Send, TaskMessage
from common.errors import InvalidArgument, OrchestratorError
from common.service import Infra
from common.store import queries
from services.gateway.core import JobsCore
from services.gateway.http_guard import HttpGuard, caller_of, error_response, parse_json
from services.gateway.http_models import VideoStart, video_action
from services.gateway.requests import VideoJobRequest
from services.gateway.seed_shapes import seed_field_error, seed_status
from services.gateway.seed_story import add_story_routes
from services.video_worker.fal_webhook import WEBHOOK_PATH, BadWebhook, request_id_of

log = logging.getLogger(__name__)

JSON_LIMIT = 1 << 20
# The seed's start action took only the arena URL and generated this many segments.
SEED_DEFAULT_SEGMENTS = 5
WEBHOOK_MEMORY = 10_000
OPEN_PATHS = ("/healthz", "/webhooks/")


def seed_error(exc: OrchestratorError) -> web.Response:
    """The seed video API's error shape: its own field names."""
    if isinstance(exc, InvalidArgument):
        return error_response(exc, seed_field_error(exc))
    return error_response(exc)


class HttpApi:
    def __init__(self, infra: Infra, core: JobsCore, guard: HttpGuard) -> None:
        self.infra = infra
        self.core = core
        self.guard = guard
        self.serving = True
        # Request ids whose webhook already triggered a poll: fal may call back more than once.
        self._seen_webhooks: OrderedDict[str, None] = OrderedDict()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=JSON_LIMIT, middlewares=[self.guard.middleware])
        app.router.add_post("/api/generate-video", self.generate_video)
        app.router.add_post(WEBHOOK_PATH, self.fal_webhook)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        add_story_routes(app, self.core, self.guard)
        return app

    async def generate_video(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            action = video_action(parse_json(await self.guard.read_body(request)))
            if isinstance(action, VideoStart):
                segments = action.totalSegments
                if segments is None:
                    segments = 0 if action.segmentPrompts else SEED_DEFAULT_SEGMENTS
                view, _ = await self.core.start_video(
                    VideoJobRequest(
                        battle_arena_url=action.battleArenaUrl,
                        total_segments=segments,
                        prompt=action.prompt,
                        segment_prompts=list(action.segmentPrompts or []),
                        idempotency_key=action.idempotencyKey,
                    ),
                    caller,
                )
                return web.json_response(
                    {
                        "sessionId": view.job.id,
                        "totalSegments": view.total_segments,
                        "message": f"Video generation started for {view.total_segments} segments",
                    }
                )
            view = await self.core.get(action.sessionId, caller, with_tasks=False)
            return web.json_response(seed_status(view))
        except OrchestratorError as exc:
            return seed_error(exc)

    async def fal_webhook(self, request: web.Request) -> web.Response:
        """fal says a request finished: poll it now instead of at the next interval.

        The call-back only triggers a poll (the worker asks fal itself), so a forged one costs a
        status call and nothing else.
        """
        try:
            request_id = request_id_of(parse_json(await self.guard.read_body(request)))
        except (InvalidArgument, BadWebhook) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if request_id in self._seen_webhooks:
            return web.json_response({"status": "duplicate"})
        async with self.infra.db.read() as session:
            task = await queries.task_by_request_id(session, request_id)
        if task is None or task.status != "running":
            return web.json_response({"status": "ignored"})
        self._remember(request_id)
        poll = TaskMessage(task.id, task.job_id, MessageKind.POLL, task.attempt, once=True)
        await self.infra.committer.send_now(Send(poll, task.kind, task.priority))
        return web.json_response({"status": "accepted"})

    def _remember(self, request_id: str) -> None:
        self._seen_webhooks[request_id] = None
        while len(self._seen_webhooks) > WEBHOOK_MEMORY:
            self._seen_webhooks.popitem(last=False)

    async def healthz(self, _request: web.Request) -> web.Response:
        status = 200 if self.serving else 503
        return web.json_response(
            {"status": "serving" if self.serving else "draining"}, status=status
        )

    async def metrics(self, _request: web.Request) -> web.Response:
        async with self.infra.db.read() as session:
            jobs = await queries.count_by_status(session, "jobs")
            tasks = await queries.count_by_status(session, "tasks")
        lines = ["# TYPE orchestrator_jobs gauge"]
        lines += [f'orchestrator_jobs{{status="{s}"}} {n}' for s, n in sorted(jobs.items())]
        lines.append("# TYPE orchestrator_tasks gauge")
        lines += [f'orchestrator_tasks{{status="{s}"}} {n}' for s, n in sorted(tasks.items())]
        lines.append("# TYPE orchestrator_watched_jobs gauge")
        lines.append(f"orchestrator_watched_jobs {self.core.hub.watched_jobs}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
