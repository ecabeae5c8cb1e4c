"""Jinja2 for the pages: templates from this package, autoescaping on for everything.

`Renderer.page` turns a template and its values into a response carrying the security headers
and, when the page handed out a CSRF token the browser lacks, the CSRF cookie. Values common to
every page (the caller, the CSRF token, the labels, whether logging in is a thing) are added
here, so a template can never forget them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from common.auth import Role
from services.gateway.http_guard import caller_of
from services.gateway.web import present
from services.gateway.web.security import CSRF_FIELD, PAGE_HEADERS, csrf_token, remember_csrf

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


class Renderer:
    def __init__(self, *, tokens_enabled: bool, static_url: Any) -> None:
        self.tokens_enabled = tokens_enabled
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,  # every template, whatever its name
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            static=static_url,
            when=present.when,
            plural=present.plural,
            job_labels=present.JOB_LABELS,
            task_labels=present.TASK_LABELS,
            labels_json=present.labels_json(),
            csrf_field=CSRF_FIELD,
        )

    def html(self, request: web.Request, template: str, **values: Any) -> str:
        caller = caller_of(request)
        return self.env.get_template(template).render(
            caller=caller,
            may_submit=caller.role >= Role.SUBMIT,
            tokens_enabled=self.tokens_enabled,
            csrf=csrf_token(request),
            path=request.path_qs,
            **values,
        )

    def page(
        self, request: web.Request, template: str, *, status: int = 200, **values: Any
    ) -> web.Response:
        response = web.Response(
            text=self.html(request, template, **values),
            status=status,
            content_type="text/html",
            charset="utf-8",
        )
        finish(request, response)
        return response


def finish(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every page response carries (and the CSRF cookie, if the page made one)."""
    response.headers.update(PAGE_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    remember_csrf(request, response)
