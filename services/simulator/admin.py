"""Admin routes under /_sim/: read stats, read and change config, reset, rotate the webhook
signing key, health."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from services.simulator.endpoint import STATE


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]


def _flag(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.lower() not in {"0", "false"}


async def get_stats(request: web.Request) -> web.Response:
    """`?logs=false` leaves out call_log and chat_log (cheap to poll); `?timeline=true` adds
    `timeline`, each accepted request's accept, start and completion times (off by default:
    one entry per request)."""
    snapshot = request.app[STATE].snapshot(
        with_logs=_flag(request, "logs", True), with_timeline=_flag(request, "timeline", False)
    )
    return web.json_response(snapshot)


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].config.public_dump())


async def post_config(request: web.Request) -> web.Response:
    """Merge a JSON object of top-level changes; 400 naming the field when invalid."""
    try:
        changes = json.loads(await request.text())
    except ValueError:
        return web.json_response({"detail": "body must be a JSON object"}, status=400)
    if not isinstance(changes, dict):
        return web.json_response({"detail": "body must be a JSON object"}, status=400)
    state = request.app[STATE]
    try:
        config = state.configure(**changes)
    except ValidationError as exc:
        return web.json_response({"detail": _problems(exc)}, status=400)
    return web.json_response(config.public_dump())


async def post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.json_response(state.config.public_dump())


async def post_rotate_key(request: web.Request) -> web.Response:
    """Sign webhooks with a new key; `{"keep_previous": false}` also unpublishes the old one."""
    raw = await request.text()
    try:
        options = json.loads(raw) if raw.strip() else {}
    except ValueError:
        options = None
    keep = options.get("keep_previous", True) if isinstance(options, dict) else None
    if not isinstance(keep, bool):
        return web.json_response({"detail": 'body: {"keep_previous": true|false}'}, status=400)
    signer = request.app[STATE].signer
    kid = signer.rotate(keep_previous=keep)
    return web.json_response({"kid": kid, **signer.jwks()})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_get("/_sim/config", get_config)
    app.router.add_post("/_sim/config", post_config)
    app.router.add_post("/_sim/reset", post_reset)
    app.router.add_post("/_sim/webhook_keys/rotate", post_rotate_key)
    app.router.add_get("/_sim/health", health)
