"""Progress lines while the benchmark runs (stderr, so stdout holds only the table)."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable

_STARTED = time.monotonic()


def say(message: str) -> None:
    """Print `[elapsed] message` to stderr right away."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


async def best_effort(what: str, action: Callable[[], Awaitable[object]]) -> None:
    """Run a clean-up step; a failure is printed, never raised over the error being handled."""
    try:
        await action()
    except Exception as exc:  # a clean-up failure must not hide why the run failed
        say(f"warning: could not {what}: {type(exc).__name__}: {exc}")
