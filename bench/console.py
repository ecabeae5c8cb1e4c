"""Progress lines while the benchmark runs (stderr, so stdout holds only the table)."""

from __future__ import annotations

import sys
import time

_STARTED = time.monotonic()


def say(message: str) -> None:
    """Print `[elapsed] message` to stderr right away."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)
