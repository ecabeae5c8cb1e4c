"""Webhook URLs that name the task and attempt they are for, signed by the service.

A provider is handed `<base>?task=<id>&attempt=<n>&sig=<hmac>` with each submit. When it calls
back, the signature proves the URL came from us (so a forged call cannot point at an arbitrary
task), and the task and attempt say where the answer belongs, even when the worker died before
it could record the provider's request id.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlencode

SIGNATURE_HEX = 32


@dataclass(frozen=True)
class WebhookTarget:
    task_id: int
    attempt: int


def _signature(secret: str, task_id: int, attempt: int) -> str:
    message = f"webhook:{task_id}:{attempt}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:SIGNATURE_HEX]


def webhook_url(base: str, secret: str, task_id: int, attempt: int) -> str:
    query = urlencode(
        {"task": task_id, "attempt": attempt, "sig": _signature(secret, task_id, attempt)}
    )
    return f"{base}?{query}"


def verify_target(secret: str, query: dict[str, str]) -> WebhookTarget | None:
    """The task and attempt a webhook's query names, if its signature is ours; else None."""
    task, attempt, signature = query.get("task", ""), query.get("attempt", ""), query.get("sig", "")
    if not (task.isdigit() and attempt.isdigit() and len(task) <= 19 and len(attempt) <= 9):
        return None
    expected = _signature(secret, int(task), int(attempt))
    if not hmac.compare_digest(expected, signature):
        return None
    return WebhookTarget(int(task), int(attempt))
