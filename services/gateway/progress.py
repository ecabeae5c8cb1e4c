"""Wakes the watchers of a job when a progress note for it arrives.

Each gateway subscribes to the broker's progress exchange; a note says "job J has events up to
cursor C". Watchers then read the new events from the store themselves, so a lost note costs
only latency: every watcher also re-reads on a short timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from common.broker import ProgressNote

# How long a watcher waits for a note before reading the store anyway.
FALLBACK_READ_SECONDS = 2.0


class ProgressHub:
    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Event]] = {}

    def on_note(self, note: ProgressNote) -> None:
        """Broker callback: wake everyone watching `note.job_id`."""
        for event in self._listeners.get(note.job_id, ()):
            event.set()

    @contextmanager
    def listen(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `job_id` has news; clear it before each read of the store."""
        event = asyncio.Event()
        self._listeners.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            listeners = self._listeners.get(job_id)
            if listeners is not None:
                listeners.discard(event)
                if not listeners:
                    del self._listeners[job_id]

    @property
    def watched_jobs(self) -> int:
        return len(self._listeners)
