"""Client-supplied folders resolved inside the configured output root, or refused.

Checked by the gateway before a job is recorded and again by the story worker right before it
writes (a symlink could have appeared in between).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from common.errors import InvalidArgument

MAX_DIRECTORY = 255
FIELD = "output_directory"


def resolve_output_dir(root: str | Path, directory: str) -> Path:
    """The real absolute path of `directory` under `root`; InvalidArgument if it escapes."""
    if not directory or "\x00" in directory or len(directory) > MAX_DIRECTORY:
        raise InvalidArgument(FIELD, f"must be 1..{MAX_DIRECTORY} characters without NUL")
    relative = PurePosixPath(directory)
    if relative.is_absolute():
        raise InvalidArgument(FIELD, f"must be relative to the output root, got {directory!r}")
    if ".." in relative.parts:
        raise InvalidArgument(FIELD, f"must not contain '..', got {directory!r}")
    base = Path(root).resolve()
    # resolve() follows every symlink that exists along the way.
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise InvalidArgument(FIELD, f"{directory!r} leads outside the output root")
    return target
