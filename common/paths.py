"""Client-supplied folders resolved inside the configured output root, or refused.

Checked by the gateway before a job is recorded and again by the story worker right before it
writes (a symlink could have appeared in between).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePosixPath

from common.errors import InvalidArgument

MAX_DIRECTORY = 255
# Every file system here limits a name (one path component) to 255 bytes; a set file adds its
# own name below the folder, so folder names keep well under.
MAX_COMPONENT_BYTES = 200
FIELD = "output_directory"


def resolve_output_dir(root: str | Path, directory: str) -> Path:
    """The real absolute path of `directory` under `root`; InvalidArgument if it escapes."""
    if not directory or len(directory) > MAX_DIRECTORY:
        raise InvalidArgument(FIELD, f"must be 1..{MAX_DIRECTORY} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in directory) or "\\" in directory:
        raise InvalidArgument(FIELD, "must not contain control characters or backslashes")
    relative = PurePosixPath(directory)
    for part in relative.parts:
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise InvalidArgument(
                FIELD, f"each folder name at most {MAX_COMPONENT_BYTES} bytes of UTF-8"
            )
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
