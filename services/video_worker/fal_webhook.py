"""fal's completion call-back: where it arrives and what it says.

fal POSTs `{"request_id", "gateway_request_id", "status": "OK" | "ERROR", "payload", "error"}`
to the `fal_webhook` URL given at submit, possibly more than once.
"""

from __future__ import annotations

from typing import Any

PROVIDER = "fal"
WEBHOOK_PATH = f"/webhooks/{PROVIDER}"
MAX_REQUEST_ID = 128


class BadWebhook(ValueError):
    """Not a call-back fal would send."""


def request_id_of(body: Any) -> str:
    """The request a call-back is about."""
    if not isinstance(body, dict):
        raise BadWebhook("body: must be a JSON object")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise BadWebhook("request_id: required")
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise BadWebhook(f"request_id: at most {MAX_REQUEST_ID} printable characters")
    return request_id
