"""The gateway's HTTP side port (aiohttp): the seed-compatible JSON API, fal webhooks, health.

Routes:
  POST /api/generate-video        seed video API: {"action": "start" | "status" | "retry", ...}
  POST /webhooks/fal              fal's completion call-back: triggers an early poll
  POST /api/uploads               an arena image (raw body, Content-Type image/png|jpeg|webp,
                                  ?file_name=...) put on fal's CDN: {"url": ...}
  GET  /healthz                   200 while serving, 503 while draining (no token needed)
  GET  /metrics                   Prometheus text format
  (and the story routes of seed_story.py)

Every route goes through the HTTP guard (http_guard.py): tokens, rate, body limits, errors.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web

from common import metrics
from common.attempts.webhooks import Verdict, on_webhook
from common.auth import Caller, Role
from common.domain.kinds import VIDEO_SEGMENT
from common.domain.states import JobKind
from common.errors import InvalidArgument, OrchestratorError
from common.resilience import ProviderError
from common.service import Infra
from common.store import queries
from common.webhook_urls import verify_target
from services.gateway.core import JobsCore
from services.gateway.fields import check_text
from services.gateway.http_guard import HttpGuard, caller_of, error_response, parse_json
from services.gateway.http_models import VideoRetry, VideoStart, video_action
from services.gateway.requests import VideoJobRequest
from services.gateway.seed_shapes import seed_field_error, seed_status
from services.gateway.seed_story import add_story_routes
from services.gateway.web import WEB_OPEN_PATHS, add_web_routes
from services.video_worker.fal_upload import (
    CONTENT_TYPES,
    MAX_FILE_NAME,
    MAX_UPLOAD_BYTES,
    FalUploader,
    InvalidUpload,
)
from services.video_worker.fal_webhook import (
    WEBHOOK_PATH,
    BadWebhook,
    FalWebhookVerifier,
    read_reported,
)

log = logging.getLogger(__name__)

JSON_LIMIT = 1 << 20
# The kinds whose fal call-backs carry a result the gateway records itself.
FAL_READERS = {VIDEO_SEGMENT.name: read_reported}
BODY_LIMIT = MAX_UPLOAD_BYTES + (1 << 16)  # the largest body of any route (an upload)
# The seed's start action took only the arena URL and generated this many segments.
SEED_DEFAULT_SEGMENTS = 5
WEBHOOK_MEMORY = 10_000
OPEN_PATHS = ("/healthz", "/webhooks/", *WEB_OPEN_PATHS)


def seed_error(exc: OrchestratorError) -> web.Response:
    """The seed video API's error shape: its own field names."""
    if isinstance(exc, InvalidArgument):
        return error_response(exc, seed_field_error(exc))
    return error_response(exc)


class HttpApi:
    def __init__(
        self,
        infra: Infra,
        core: JobsCore,
        guard: HttpGuard,
        webhooks: FalWebhookVerifier,
        uploader: FalUploader,
    ) -> None:
        self.infra = infra
        self.core = core
        self.guard = guard
        self.webhooks = webhooks
        self.uploader = uploader
        self.serving = True
        # Request ids whose webhook already triggered a poll: fal may call back more than once.
        self._seen_webhooks: OrderedDict[str, None] = OrderedDict()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=BODY_LIMIT, middlewares=[self.guard.middleware])
        app.router.add_post("/api/generate-video", self.generate_video)
        app.router.add_post("/api/uploads", self.upload)
        app.router.add_post(WEBHOOK_PATH, self.fal_webhook)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        add_story_routes(app, self.core, self.guard)
        add_web_routes(app, self.core, self.guard, self.uploader)
        return app

    async def generate_video(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            action = video_action(parse_json(await self.guard.read_body(request, limit=JSON_LIMIT)))
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
                        max_concurrency=action.maxConcurrency,
                        deadline_seconds=action.deadlineSeconds,
                        reuse_results=action.reuseResults,
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
            if isinstance(action, VideoRetry):
                return web.json_response(await self._retry_video(action, caller))
            view = await self.core.get(action.sessionId, caller, with_tasks=False)
            return web.json_response(seed_status(view))
        except OrchestratorError as exc:
            return seed_error(exc)

    async def _retry_video(self, action: VideoRetry, caller: Caller) -> dict[str, Any]:
        view = await self.core.get(action.sessionId, caller, with_tasks=False)
        if view.job.kind != JobKind.VIDEO:
            raise InvalidArgument("sessionId", f"job {action.sessionId} is not a video job")
        try:
            outcome = await self.core.retry_failed(
                action.sessionId,
                action.maxRetries,
                caller,
                indices=action.taskIndices or (),
                regenerate=action.regenerate,
            )
        except InvalidArgument as exc:  # named as this body spells it
            field = {"task_indices": "taskIndices", "max_retries": "maxRetries"}.get(exc.field)
            raise InvalidArgument(field or exc.field, exc.reason) from None
        return {
            "sessionId": action.sessionId,
            "retried": outcome.retried,
            "message": outcome.message,
            **seed_status(outcome.view),
        }

    async def upload(self, request: web.Request) -> web.Response:
        """Put an arena image on fal's CDN (through fal-client's storage upload), so a client
        with a local file needs no provider key."""
        caller_of(request).require(Role.SUBMIT, "uploading an image")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise InvalidArgument(
                "Content-Type", f"must be one of {', '.join(sorted(CONTENT_TYPES))}"
            )
        file_name = request.query.get("file_name", "arena")
        check_text("file_name", file_name, max_chars=MAX_FILE_NAME, required=True)
        if "/" in file_name or "\\" in file_name or file_name in (".", ".."):
            raise InvalidArgument("file_name", "a plain file name, without a path")
        data = await self.guard.read_body(request, limit=MAX_UPLOAD_BYTES)
        if data and not _looks_like(content_type, data):
            raise InvalidArgument(
                "body", f"is not a {content_type} image (its bytes say otherwise)"
            )
        try:
            url = await self.uploader.upload(data, content_type, file_name)
        except InvalidUpload as exc:
            raise InvalidArgument("body", exc.message) from None
        except ProviderError as exc:
            log.warning("upload to fal failed: %s", exc, extra={"event": "warning"})
            status = 503 if exc.retryable else 502
            return web.json_response({"error": "the image store refused the upload"}, status=status)
        log.info("uploaded %s (%d bytes)", file_name, len(data), extra={"event": "session"})
        return web.json_response({"url": url})

    async def fal_webhook(self, request: web.Request) -> web.Response:
        """fal says a request finished: poll it now instead of at the next interval, or adopt
        it when its submit was cut off (common.attempts.webhooks).

        Two proofs before anything happens: the URL's signed task and attempt (we made the URL),
        and fal's ED25519 signature over the body (fal sent it). An unverified call is 401 and
        changes nothing; in particular it never takes the request id's duplicate slot, so the
        real call-back is not dropped after a forged one. A verified one that carried the
        result (signed with it) records the segment's success; one that did not triggers a
        poll that fetches the result from fal.
        """
        secret = self.infra.settings.webhook_secret
        target = verify_target(secret.get_secret_value(), dict(request.query)) if secret else None
        if target is None:
            return web.json_response(
                {"error": "webhook URL: not signed by this service"}, status=401
            )
        body = await self.guard.read_body(request, limit=JSON_LIMIT)
        try:
            callback = await self.webhooks.verify(request.headers, body)
        except BadWebhook as exc:
            log.warning("refused a fal webhook: %s", exc, extra={"event": "warning"})
            return web.json_response({"error": str(exc)}, status=401)
        except ProviderError as exc:  # fal's keys could not be fetched: let fal deliver again
            log.warning("cannot verify fal webhooks now: %s", exc, extra={"event": "warning"})
            return web.json_response({"error": "cannot verify now; try again"}, status=503)
        if callback.request_id in self._seen_webhooks:
            return web.json_response({"status": "duplicate"})
        verdict = await on_webhook(
            self.infra.committer,
            target,
            callback.request_id,
            result=callback.result,
            readers=FAL_READERS,
        )
        if verdict is not Verdict.IGNORED:
            self._remember(callback.request_id)
        return web.json_response({"status": verdict.value})

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
        """The process's metrics, with the state store's counts read at scrape time."""
        async with self.infra.db.read() as session:
            jobs = await queries.count_by_status(session, "jobs")
            tasks = await queries.count_by_status(session, "tasks")
            pools = await queries.slot_pools(session)
        for gauge, counts in ((metrics.jobs, jobs), (metrics.tasks, tasks)):
            gauge.clear()
            for (kind, status), n in counts.items():
                gauge.labels(kind, status).set(n)
        for pool, (used, limit) in pools.items():
            metrics.slots_in_use.labels(pool).set(used)
            metrics.slots_limit.labels(pool).set(limit)
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})


def _looks_like(content_type: str, data: bytes) -> bool:
    """Whether `data` starts as an image of `content_type` does (its magic bytes)."""
    if content_type == "image/png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if content_type == "image/jpeg":
        return data.startswith(b"\xff\xd8\xff")
    if content_type == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return False
