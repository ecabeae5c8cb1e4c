"""fal webhook delivery: POST the outcome of a generation to its `fal_webhook` URL.

Deliveries run as owned tasks (kept in a set, cancelled on reset and shutdown). A failed
delivery is logged and counted, never raised: the receiver being down is a scenario to test,
not a simulator crash. Like fal, a webhook may arrive more than once (`webhook_repeats`), and
each delivery is signed afresh (see webhook_signing.py) unless `webhook_signing` is off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from services.simulator.config import SimulatorConfig
from services.simulator.fal_queue import GENERATION_ERROR, Outcome, QueuedRequest
from services.simulator.stats import Stats
from services.simulator.webhook_signing import WebhookSigner

logger = logging.getLogger(__name__)


def webhook_body(request: QueuedRequest, *, payload: bool = True) -> dict[str, Any]:
    """What fal POSTs to a webhook when a request completes: an OK one carries the result,
    unless `payload` is off (fal's `payload_error`: the result could not be serialised)."""
    ok = request.outcome is Outcome.OK
    body: dict[str, Any] = {
        "request_id": request.request_id,
        "gateway_request_id": request.request_id,
        "status": "OK" if ok else "ERROR",
        "payload": request.result() if ok and payload else None,
        "error": None if ok else GENERATION_ERROR,
    }
    if ok and not payload:
        body["payload_error"] = "Response payload is not JSON serializable."
    return body


class WebhookSender:
    """Delivers webhooks on its own aiohttp session; `start` and `aclose` bracket its life."""

    def __init__(
        self,
        config: Callable[[], SimulatorConfig],
        stats: Callable[[], Stats],
        signer: WebhookSigner,
    ) -> None:
        self._config = config
        self._stats = stats
        self._signer = signer
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        self.cancel_pending()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def cancel_pending(self) -> None:
        """Cancel deliveries in flight (on reset: their requests are gone)."""
        for task in self._tasks:
            task.cancel()

    def dispatch(self, request: QueuedRequest) -> None:
        """Schedule delivery for a completed request that asked for a webhook."""
        if request.webhook_url is None or request.outcome is Outcome.CANCELLED:
            return
        if self._session is None:
            logger.warning("webhook for %s dropped: simulator not running", request.request_id)
            return
        task = asyncio.create_task(
            self._deliver(
                self._session,
                request.webhook_url,
                webhook_body(request, payload=self._config().webhook_payload),
            ),
            name=f"sim-webhook-{request.request_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]
    ) -> None:
        config = self._config()
        timeout = aiohttp.ClientTimeout(total=config.webhook_timeout)
        # The exact bytes sent are the bytes signed.
        data = json.dumps(body).encode()
        for _ in range(config.webhook_repeats):
            headers = {"Content-Type": "application/json"}
            if config.webhook_signing:
                headers |= self._signer.headers(
                    body["request_id"],
                    data,
                    now=time.time(),
                    fault=config.webhook_signature_fault,
                )
            try:
                async with session.post(
                    url, data=data, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    delivered = response.status < 300
                    if not delivered:
                        logger.warning(
                            "webhook for %s answered %s", body["request_id"], response.status
                        )
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                delivered = False
                logger.warning("webhook for %s failed: %s", body["request_id"], type(exc).__name__)
            stats = self._stats()
            if delivered:
                stats.webhooks_sent += 1
            else:
                stats.webhook_failures += 1
