"""Call accounting: what tests and the benchmark read to prove "never paid twice"."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any

from services.simulator.config import Endpoint

RESET_KEY = "reset"  # `responses` key for calls answered by dropping the connection


def payload_hash(body: object) -> str:
    """sha256 of the canonical JSON of a submit body (sorted keys, no whitespace)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ChatExcerpt:
    """The parts of a chat request worth keeping in `chat_log`."""

    user: str
    system: str

    @classmethod
    def of(cls, body: object) -> ChatExcerpt:
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return cls("", "")
        user = system = ""
        for message in messages:
            if not isinstance(message, dict):
                continue
            text = message_text(message.get("content"))
            if message.get("role") == "user":
                user = text
            elif message.get("role") in {"system", "developer"} and not system:
                system = text
        return cls(user[:500], system[:200])


def message_text(content: object) -> str:
    """Text of a chat message: a string, or the text parts of a content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


class Stats:
    """Counters and bounded logs of every call the simulator answered."""

    def __init__(self, log_limit: int) -> None:
        self.calls: Counter[str] = Counter()
        self.responses: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.faults_injected: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.submits_total = 0
        self.accepted_requests = 0
        self.submits_by_payload: Counter[str] = Counter()
        self.webhooks_sent = 0
        self.webhook_failures = 0
        self.chat_calls = 0
        # Every 429 answered, whatever its cause; and the chat calls refused by a budget.
        self.rate_limited: Counter[str] = Counter()
        self.over_budget: Counter[str] = Counter()
        self.call_log: deque[dict[str, Any]] = deque(maxlen=log_limit)
        self.chat_log: deque[dict[str, Any]] = deque(maxlen=log_limit)

    def resize_logs(self, log_limit: int) -> None:
        """Change the log caps, keeping the newest entries."""
        self.call_log = deque(self.call_log, maxlen=log_limit)
        self.chat_log = deque(self.chat_log, maxlen=log_limit)

    def record_arrival(self, endpoint: Endpoint) -> None:
        """Count a call as soon as it arrives (before any fault holds it)."""
        self.calls[endpoint] += 1
        if endpoint == "submit":
            self.submits_total += 1
        elif endpoint == "chat":
            self.chat_calls += 1

    def record_fault(self, endpoint: Endpoint, label: str) -> None:
        """Count a fault when it is decided: a held call may be answered long after (or never,
        if the client hangs up and the server drops the handler)."""
        self.faults_injected[endpoint][label] += 1

    def record_answer(
        self,
        *,
        t: float,
        endpoint: Endpoint,
        status: int | None,
        fault: str | None,
        request_id: str | None,
        chat: ChatExcerpt | None,
    ) -> None:
        """Account how a call was answered; `status` None means the connection was dropped."""
        self.responses[endpoint][RESET_KEY if status is None else str(status)] += 1
        if status == 429:
            self.rate_limited[endpoint] += 1
        self.call_log.append(
            {
                "t": t,
                "endpoint": endpoint,
                "status": status,
                "fault": fault,
                "request_id": request_id,
            }
        )
        if endpoint == "chat":
            excerpt = chat or ChatExcerpt("", "")
            self.chat_log.append(
                {
                    "t": t,
                    "status": status,
                    "fault": fault,
                    "user": excerpt.user,
                    "system": excerpt.system,
                }
            )

    def record_accepted(self, body: object) -> None:
        """A submit created a (paid) request."""
        self.accepted_requests += 1
        self.submits_by_payload[payload_hash(body)] += 1

    def snapshot(self, *, with_logs: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "calls": dict(self.calls),
            "responses": {e: dict(c) for e, c in self.responses.items()},
            "faults_injected": {e: dict(c) for e, c in self.faults_injected.items()},
            "submits_total": self.submits_total,
            "accepted_requests": self.accepted_requests,
            "submits_by_payload": dict(self.submits_by_payload),
            "duplicate_submits": {h: n for h, n in self.submits_by_payload.items() if n > 1},
            "webhooks_sent": self.webhooks_sent,
            "webhook_failures": self.webhook_failures,
            "chat_calls": self.chat_calls,
            "rate_limited": dict(self.rate_limited),
            "over_budget": dict(self.over_budget),
        }
        if with_logs:
            data["call_log"] = list(self.call_log)
            data["chat_log"] = list(self.chat_log)
        return data
