"""Wiring of the web dashboard onto the gateway's HTTP app (`add_web_routes`).

Routes (all but /login, /logout and /static/ behind the HTTP guard, like every other route):

  GET  /                          job list: ?kind=&status=...&page=<ListJobs page token>
                                  (&partial=rows: only the table's rows, for the live refresh)
  GET  /jobs/{id}                 a job: status, warnings, actions, task grid, results, events
  GET  /jobs/{id}/panel           the live part of that page, as an HTML fragment
  GET  /jobs/{id}/events          Server-Sent Events of the job's events (sse.py)
  POST /jobs/{id}/retry           RetryFailed          (form, CSRF-checked; task_index +
                                  regenerate: re-roll one succeeded task)
  POST /jobs/{id}/cancel          CancelJob            (form, CSRF-checked)
  GET  /new/video, POST           the video job form (arena URL or an uploaded image)
  GET  /new/story, POST           the story job form
  GET  /login, POST; POST /logout the token cookie (only when tokens are configured)
  GET  /static/...                the stylesheet and the script

The guard answers a missing or bad token with a JSON 401; for a page a browser navigates to,
`web_errors` turns that into a redirect to the login page, and other JSON errors into a page.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware

from services.gateway.core import JobsCore
from services.gateway.http_guard import HttpGuard
from services.gateway.web.login import Login
from services.gateway.web.pages import Pages
from services.gateway.web.security import safe_next
from services.gateway.web.sse import EventStreams
from services.gateway.web.templating import STATIC, Renderer, finish
from services.video_worker.fal_upload import FalUploader

# Paths that need no token (added to the HTTP guard's open paths).
WEB_OPEN_PATHS = ("/login", "/logout", "/static/")
WEB_PREFIXES = ("/jobs/", "/new/", "/login", "/logout", "/static/")
STATIC_FILES = ("style.css", "app.js")
STREAMS = web.AppKey("web_event_streams", EventStreams)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_web_path(path: str) -> bool:
    return path == "/" or path.startswith(WEB_PREFIXES)


def is_fragment(request: web.Request) -> bool:
    """Requests the page's script makes (it handles their errors itself)."""
    return request.path.endswith(("/panel", "/events")) or "partial" in request.query


def add_web_routes(
    app: web.Application, core: JobsCore, guard: HttpGuard, uploader: FalUploader
) -> None:
    static = app.router.add_static("/static/", STATIC, name="static", append_version=True)
    # Versioned URLs computed once (aiohttp hashes the file for each url_for).
    urls = {name: str(static.url_for(filename=name)) for name in STATIC_FILES}
    renderer = Renderer(tokens_enabled=guard.tokens.enabled, static_url=urls.__getitem__)
    Pages(core, guard, uploader, renderer).add_routes(app)
    Login(guard, renderer).add_routes(app)
    streams = EventStreams(core, guard)
    app[STREAMS] = streams
    app.router.add_get("/jobs/{job_id}/events", streams.handle)
    app.on_shutdown.append(streams.close_all)
    # Outside the guard, so it sees the guard's answers.
    app.middlewares.insert(0, _web_errors(renderer))


def _web_errors(renderer: Renderer) -> Middleware:
    @web.middleware
    async def web_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_web_path(request.path):
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or is_fragment(request):
                raise
            response = renderer.page(
                request, "error.html", status=exc.status, message=exc.reason, title="Error"
            )
        if response.status >= 400 and not is_fragment(request):
            response = _for_browser(request, response, renderer)
        if request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "public, max-age=86400"
        finish(request, response)
        return response

    return web_errors


def _for_browser(
    request: web.Request, response: web.StreamResponse, renderer: Renderer
) -> web.StreamResponse:
    """The guard's JSON errors, as a person would want them: a 401 sends you to the login page
    (then back), anything else is a page with the message."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return response
    if response.status == 401:
        back = request.path_qs if request.method == "GET" else "/"
        raise web.HTTPSeeOther(f"/login?next={_quote(safe_next(back))}")
    try:
        message = str(json.loads(response.text or "{}").get("error", response.reason))
    except (ValueError, AttributeError):
        message = response.reason
    page = renderer.page(
        request, "error.html", status=response.status, message=message, title="Error"
    )
    for header in ("Retry-After",):
        if header in response.headers:
            page.headers[header] = response.headers[header]
    return page


def _quote(path: str) -> str:
    return quote(path, safe="/")
