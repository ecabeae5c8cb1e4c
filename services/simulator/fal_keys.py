"""fal's public webhook keys: `GET /.well-known/jwks.json` (on fal, at rest.alpha.fal.ai).

An endpoint like the others ("jwks"), so a test can count the fetches a receiver makes and
inject faults on them.
"""

from __future__ import annotations

from aiohttp import web

from services.simulator.endpoint import STATE, answer_fault, endpoint
from services.simulator.errors import fal_error
from services.simulator.faults import Fault

JWKS_PATH = "/.well-known/jwks.json"


def _error(status: int, fault: Fault) -> web.StreamResponse:
    return fal_error(status, retry_after=fault.retry_after)


@endpoint("jwks")
async def jwks(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    fault = state.decide_fault("jwks", "")
    if fault and (answer := await answer_fault(request, fault, _error)):
        return answer
    return web.json_response(state.signer.jwks())


def add_key_routes(app: web.Application) -> None:
    app.router.add_get(JWKS_PATH, jwks)
