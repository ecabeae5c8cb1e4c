"""The pages' defences: the login cookie, CSRF tokens, the Origin check, response headers.

* **Login cookie.** The HTTP guard accepts the token from the HttpOnly cookie `COOKIE` on page
  routes (never on the JSON API). It is set by the login form with SameSite=Strict, and Secure
  when the request came over HTTPS; logging out expires it.
* **CSRF.** Every form carries a token that must equal the HttpOnly cookie `CSRF_COOKIE`
  (double submit: another site can make a browser send the cookie, but cannot read it to put
  it in the form), and the request's `Origin` (or, without one, its `Referer`) must name this
  host. A request with neither is refused. The CSRF cookie is SameSite=Lax, so a page reached
  from a link elsewhere keeps the token its other tabs use.
* **Headers.** Pages allow scripts, styles and forms from this origin only (no inline script,
  so injected markup could not run even if escaping failed), media from anywhere (the results
  live on the provider's CDN), and no framing.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from common.errors import PermissionDenied
from services.gateway.http_guard import COOKIE

CSRF_COOKIE = "orchestrator_csrf"
CSRF_FIELD = "csrf_token"
CSRF_KEY = web.RequestKey("csrf", str)
CSRF_CHARS = 43  # secrets.token_urlsafe(32)

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' https: http:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def is_https(request: web.Request) -> bool:
    return request.secure


def csrf_token(request: web.Request) -> str:
    """This browser's CSRF token (a new one if it has none; `remember_csrf` sets it)."""
    token = request.get(CSRF_KEY)
    if token is None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        token = cookie if _well_formed(cookie) else secrets.token_urlsafe(32)
        request[CSRF_KEY] = token
    return token


def remember_csrf(request: web.Request, response: web.StreamResponse) -> None:
    """Set the CSRF cookie on `response` when the page handed out a token the browser lacks."""
    token = request.get(CSRF_KEY)
    if token is not None and request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=is_https(request),
        )


def check_csrf(request: web.Request, submitted: str) -> None:
    """PermissionDenied unless the form's token matches the cookie and the request comes from
    a page of this host."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not _well_formed(cookie) or not hmac.compare_digest(
        cookie.encode(), submitted.encode("utf-8", "replace")
    ):
        raise PermissionDenied(
            "the form has expired or did not come from this site: reload the page and try again"
        )
    if not same_origin(request):
        raise PermissionDenied("the form was sent from another site")


def same_origin(request: web.Request) -> bool:
    """Whether `Origin` (or `Referer` without it) names the host this request was sent to.

    Only the host and port are compared: behind a proxy that ends TLS, the scheme the browser
    used is not the one this server sees.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    try:
        netloc = urlsplit(source).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == request.host.lower()


def set_login(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        COOKIE, token, path="/", httponly=True, samesite="Strict", secure=is_https(request)
    )


def clear_login(request: web.Request, response: web.StreamResponse) -> None:
    response.set_cookie(
        COOKIE,
        "",
        path="/",
        max_age=0,
        expires="Thu, 01 Jan 1970 00:00:00 GMT",
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )


def safe_next(target: str) -> str:
    """Where to go after logging in: a path on this site, never another host."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or len(target) > 2048
        or not target.isprintable()
    ):
        return "/"
    return target


def _well_formed(token: str) -> bool:
    return (
        len(token) == CSRF_CHARS
        and token.isascii()
        and token.replace("-", "").replace("_", "").isalnum()
    )
