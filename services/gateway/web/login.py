"""`/login` and `/logout`: putting a token in the HttpOnly cookie the guard reads, and taking
it out again.

Both are open paths (the guard lets them through without a token), so they check what the
guard would: the login form's token is identified by the same `Tokens`, and every attempt is
charged to the client's address in the same rate limiter, so guessing is as slow as over the
API. Without configured tokens there is nothing to log into: both pages send you home.
"""

from __future__ import annotations

from aiohttp import web

from common.errors import OrchestratorError, Unauthenticated
from services.gateway.http_guard import HttpGuard, http_status
from services.gateway.web.forms import read_form
from services.gateway.web.security import (
    CSRF_FIELD,
    check_csrf,
    clear_login,
    safe_next,
    set_login,
)
from services.gateway.web.templating import Renderer

MAX_TOKEN_CHARS = 512


class Login:
    def __init__(self, guard: HttpGuard, renderer: Renderer) -> None:
        self.guard = guard
        self.render = renderer

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/login", self.form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)

    @property
    def enabled(self) -> bool:
        return self.guard.tokens.enabled

    async def form(self, request: web.Request) -> web.Response:
        if not self.enabled:
            raise web.HTTPSeeOther("/")
        target = safe_next(request.query.get("next", "/"))
        return self.render.page(request, "login.html", next=target, error="", title="Sign in")

    async def login(self, request: web.Request) -> web.Response:
        if not self.enabled:
            raise web.HTTPSeeOther("/")
        target = "/"
        try:
            self.guard.limits.take(f"peer:{request.remote}")
            form = await read_form(request, self.guard)
            target = safe_next(form.text("next") or "/")
            check_csrf(request, form.text(CSRF_FIELD))
            token = form.text("token").strip()
            if not token or len(token) > MAX_TOKEN_CHARS:
                raise Unauthenticated("enter the token you were given")
            self.guard.tokens.identify(f"Bearer {token}")
        except OrchestratorError as exc:
            return self.render.page(
                request,
                "login.html",
                status=http_status(exc),
                next=target,
                error=str(exc),
                title="Sign in",
            )
        response = web.HTTPSeeOther(target)
        set_login(request, response, token)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        try:
            form = await read_form(request, self.guard)
            check_csrf(request, form.text(CSRF_FIELD))
        except OrchestratorError as exc:
            return self.render.page(
                request, "error.html", status=http_status(exc), message=str(exc), title="Error"
            )
        response = web.HTTPSeeOther("/login" if self.enabled else "/")
        clear_login(request, response)
        raise response
