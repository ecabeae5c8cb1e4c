"""The pages: the job list, a job, the forms that start jobs, RetryFailed and Cancel.

Every handler reads through `JobsCore` with the guard's caller, exactly as gRPC does, so owners
and roles are enforced by the core; a domain error becomes a readable page with the error's
HTTP status (a read-only token that presses "Retry" gets a 403 page saying which role it
needs). Forms are Post/Redirect/Get: a successful action answers 303 to the job's page.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from common.auth import Role
from common.domain.states import JobKind, JobStatus
from common.errors import InvalidArgument, OrchestratorError
from common.resilience import ProviderError
from services.gateway.core import JobsCore
from services.gateway.http_guard import HttpGuard, caller_of, http_status
from services.gateway.requests import (
    DEFAULT_SEGMENTS_PER_SET,
    StoryJobRequest,
    VideoJobRequest,
)
from services.gateway.views import JobView
from services.gateway.web.forms import Form, read_form
from services.gateway.web.present import JobPage
from services.gateway.web.security import CSRF_FIELD, check_csrf
from services.gateway.web.templating import Renderer
from services.video_worker.fal_upload import (
    CONTENT_TYPES,
    MAX_UPLOAD_BYTES,
    FalUploader,
    InvalidUpload,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 25
DEFAULT_VIDEO_SEGMENTS = 5
# What a redirect after an action says on the job's page (fixed texts: nothing is reflected).
NOTICES = {
    "started": "Job started.",
    "existing": "This form was already sent: here is the job it started.",
    "retried": "The failed tasks were queued again.",
    "nothing": "Nothing to retry: every task succeeded.",
    "cancelled": "Cancel requested: unfinished tasks are being stopped.",
}


@dataclass(frozen=True)
class ListFilters:
    kind: str
    statuses: tuple[str, ...]
    page: str

    @classmethod
    def of(cls, query: MultiMapping[str]) -> ListFilters:
        kind = query.get("kind", "")
        if kind and kind not in {k.value for k in JobKind}:
            raise InvalidArgument("kind", f"one of {', '.join(k.value for k in JobKind)}")
        statuses = tuple(dict.fromkeys(query.getall("status", [])))
        known = {s.value for s in JobStatus}
        for status in statuses:
            if status not in known:
                raise InvalidArgument("status", f"one of {', '.join(sorted(known))}")
        return cls(kind, statuses, query.get("page", ""))

    def query(self, page: str = "") -> str:
        pairs = [("kind", self.kind)] if self.kind else []
        pairs += [("status", s) for s in self.statuses]
        if page:
            pairs.append(("page", page))
        return urlencode(pairs)


class Pages:
    def __init__(
        self, core: JobsCore, guard: HttpGuard, uploader: FalUploader, renderer: Renderer
    ) -> None:
        self.core = core
        self.guard = guard
        self.uploader = uploader
        self.render = renderer

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.jobs)
        app.router.add_get("/jobs/{job_id}", self.job)
        app.router.add_get("/jobs/{job_id}/panel", self.panel)
        app.router.add_post("/jobs/{job_id}/retry", self.retry)
        app.router.add_post("/jobs/{job_id}/cancel", self.cancel)
        app.router.add_get("/new/video", self.new_video)
        app.router.add_post("/new/video", self.start_video)
        app.router.add_get("/new/story", self.new_story)
        app.router.add_post("/new/story", self.start_story)

    def error(self, request: web.Request, exc: OrchestratorError) -> web.Response:
        return self.render.page(
            request, "error.html", status=http_status(exc), message=str(exc), title="Error"
        )

    # The job list --------------------------------------------------------------------------

    async def jobs(self, request: web.Request) -> web.Response:
        """`/?kind=&status=&status=&page=`; `partial=rows` answers only the table's rows (the
        page's script refreshes them)."""
        partial = request.query.get("partial") == "rows"
        try:
            filters = ListFilters.of(request.query)
            views, next_page = await self.core.list(
                caller=caller_of(request),
                page_size=PAGE_SIZE,
                page_token=filters.page,
                kind=filters.kind or None,
                statuses=filters.statuses,
            )
        except OrchestratorError as exc:
            if partial:
                return web.Response(text=str(exc), status=http_status(exc))
            return self.render.page(
                request,
                "jobs.html",
                status=http_status(exc),
                error=str(exc),
                jobs=[],
                filters=ListFilters("", (), ""),
                next_page="",
                kinds=list(JobKind),
                statuses=list(JobStatus),
            )
        values: dict[str, Any] = {"jobs": views, "filters": filters, "next_page": next_page}
        if partial:
            return self.render.page(request, "_job_rows.html", **values)
        return self.render.page(
            request,
            "jobs.html",
            error="",
            kinds=list(JobKind),
            statuses=list(JobStatus),
            **values,
        )

    # One job -------------------------------------------------------------------------------

    async def _job_page(
        self, request: web.Request, *, status: int = 200, error: str = ""
    ) -> web.Response:
        view = await self.core.get(request.match_info["job_id"], caller_of(request))
        notice = NOTICES.get(request.query.get("done", ""), "")
        return self.render.page(
            request,
            "job.html",
            status=status,
            page=JobPage.of(view, self.core.kinds),
            notice=notice,
            error=error,
            title=_title(view),
        )

    async def job(self, request: web.Request) -> web.Response:
        try:
            return await self._job_page(request)
        except OrchestratorError as exc:
            return self.error(request, exc)

    async def panel(self, request: web.Request) -> web.Response:
        """The live part of a job's page (status, warnings, actions, grid, results)."""
        try:
            view = await self.core.get(request.match_info["job_id"], caller_of(request))
        except OrchestratorError as exc:
            return web.Response(text=str(exc), status=http_status(exc))
        return self.render.page(request, "_job_panel.html", page=JobPage.of(view, self.core.kinds))

    async def _act(self, request: web.Request, action: str) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            form = await read_form(request, self.guard)
            check_csrf(request, form.text(CSRF_FIELD))
            caller = caller_of(request)
            if action == "retry":
                chosen = form.text("task_index").strip()
                outcome = await self.core.retry_failed(
                    job_id,
                    form.number("max_retries"),
                    caller,
                    indices=[form.number("task_index")] if chosen else (),
                    regenerate=form.flag("regenerate"),
                )
                done = "retried" if outcome.retried else "nothing"
            else:
                await self.core.cancel(job_id, caller)
                done = "cancelled"
        except OrchestratorError as exc:
            try:
                return await self._job_page(request, status=http_status(exc), error=str(exc))
            except OrchestratorError:
                return self.error(request, exc)
        raise web.HTTPSeeOther(f"/jobs/{job_id}?done={done}")

    async def retry(self, request: web.Request) -> web.Response:
        return await self._act(request, "retry")

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._act(request, "cancel")

    # Starting jobs -------------------------------------------------------------------------

    def _form(
        self,
        request: web.Request,
        template: str,
        values: Mapping[str, str],
        *,
        status: int = 200,
        error: OrchestratorError | None = None,
    ) -> web.Response:
        limits = self.core.limits
        return self.render.page(
            request,
            template,
            status=status,
            values=values,
            error=str(error) if error else "",
            error_field=error.field if isinstance(error, InvalidArgument) else "",
            # A fresh key per form shown: sending the same form twice starts one job.
            idempotency_key=f"web-{secrets.token_hex(12)}",
            limits=limits,
            image_types=", ".join(sorted(CONTENT_TYPES)),
            max_upload_mb=MAX_UPLOAD_BYTES // (1 << 20),
        )

    async def new_video(self, request: web.Request) -> web.Response:
        return self._form(
            request, "new_video.html", {"total_segments": str(DEFAULT_VIDEO_SEGMENTS)}
        )

    async def new_story(self, request: web.Request) -> web.Response:
        return self._form(
            request,
            "new_story.html",
            {"total_segments": "30", "segments_per_set": str(DEFAULT_SEGMENTS_PER_SET)},
        )

    async def start_video(self, request: web.Request) -> web.Response:
        form = Form()
        try:
            form = await read_form(request, self.guard)
            check_csrf(request, form.text(CSRF_FIELD))
            caller = caller_of(request)
            caller.require(Role.SUBMIT, "starting a job")
            arena = form.text("battle_arena_url").strip()
            if form.upload is not None:
                if arena:
                    raise InvalidArgument(
                        "battle_arena_url", "give an image URL or a file, not both"
                    )
                arena = await self._upload(form)
            segment_prompts = [line.strip() for line in form.text("segment_prompts").splitlines()]
            segment_prompts = [p for p in segment_prompts if p]
            view, created = await self.core.start_video(
                VideoJobRequest(
                    battle_arena_url=arena,
                    total_segments=0 if segment_prompts else form.number("total_segments"),
                    prompt=_one_line(form.text("prompt")),
                    segment_prompts=segment_prompts,
                    model=form.text("model").strip(),
                    idempotency_key=form.text("idempotency_key"),
                    max_retries=form.number("max_retries"),
                ),
                caller,
            )
        except OrchestratorError as exc:
            return self._form(
                request, "new_video.html", form.fields, status=http_status(exc), error=exc
            )
        except ProviderError as exc:
            log.warning("upload to fal failed: %s", exc, extra={"event": "warning"})
            refused = InvalidArgument("image", "the image store refused the upload; try again")
            status = 503 if exc.retryable else 502
            return self._form(request, "new_video.html", form.fields, status=status, error=refused)
        return _started(view, created)

    async def _upload(self, form: Form) -> str:
        upload = form.upload
        assert upload is not None
        try:
            return await self.uploader.upload(upload.data, upload.content_type, upload.file_name)
        except InvalidUpload as exc:
            raise InvalidArgument("image", exc.message) from None

    async def start_story(self, request: web.Request) -> web.Response:
        form = Form()
        try:
            form = await read_form(request, self.guard)
            check_csrf(request, form.text(CSRF_FIELD))
            view, created = await self.core.start_story(
                StoryJobRequest(
                    idea=_one_line(form.text("idea")),
                    total_segments=form.number("total_segments"),
                    segments_per_set=form.number("segments_per_set"),
                    save_to_files=form.flag("save_to_files"),
                    output_directory=form.text("output_directory").strip(),
                    model=form.text("model").strip(),
                    idempotency_key=form.text("idempotency_key"),
                    max_retries=form.number("max_retries"),
                ),
                caller_of(request),
            )
        except OrchestratorError as exc:
            return self._form(
                request, "new_story.html", form.fields, status=http_status(exc), error=exc
            )
        return _started(view, created)


def _started(view: JobView, created: bool) -> web.Response:
    raise web.HTTPSeeOther(f"/jobs/{view.job.id}?done={'started' if created else 'existing'}")


def _one_line(text: str) -> str:
    """A text area's lines joined with spaces (prompts and ideas are one line of text)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _title(view: JobView) -> str:
    if view.is_story:
        return view.plan.title or "Story job"
    return "Video job"
