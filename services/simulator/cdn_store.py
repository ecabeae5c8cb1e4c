"""fal's CDN as an in-memory file store with a byte budget.

Files live until a reset, or until newer uploads need their room: when `limit` bytes would be
exceeded the oldest files are dropped (counted in `evicted`), so a long benchmark that uploads
keeps running in bounded memory. Parts of unfinished multipart uploads count against the same
budget but are never dropped; a file or part that cannot fit is refused (`TooLarge`, a 413).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field


class TooLarge(ValueError):
    """The bytes do not fit in the store's budget even after dropping every older file."""


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    file_name: str
    content_type: str
    data: bytes


@dataclass
class PendingUpload:
    """A multipart upload between create and complete: parts by number, with their ETags."""

    file_id: str
    file_name: str
    content_type: str
    parts: dict[int, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(part) for part in self.parts.values())


def etag(data: bytes) -> str:
    """A part's ETag as object stores send it: the quoted MD5 of its bytes."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


class CdnStore:
    """Uploaded files by id, oldest first, within `limit` bytes (files plus pending parts)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._pending: dict[str, PendingUpload] = {}
        self._file_bytes = 0
        self._pending_bytes = 0
        self.files_total = 0
        self.bytes_total = 0
        self.evicted = 0

    def get(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def put(self, file: StoredFile) -> None:
        """Keep a whole file, dropping the oldest ones if it needs their room."""
        self._make_room(len(file.data))
        self._keep(file)

    def start(self, upload_id: str, pending: PendingUpload) -> None:
        self._pending[upload_id] = pending

    def pending(self, upload_id: str, file_id: str) -> PendingUpload | None:
        """The multipart upload `upload_id`, if it belongs to `file_id`."""
        pending = self._pending.get(upload_id)
        return pending if pending is not None and pending.file_id == file_id else None

    def add_part(self, upload_id: str, number: int, data: bytes) -> str:
        """Keep (or replace) one part; its ETag."""
        pending = self._pending[upload_id]
        growth = len(data) - len(pending.parts.get(number, b""))
        if growth > 0:
            self._make_room(growth)
        pending.parts[number] = data
        self._pending_bytes += growth
        return etag(data)

    def complete(self, upload_id: str, order: list[tuple[int, str]]) -> StoredFile:
        """Join the parts in `order` (number, ETag) into a file; ValueError if one mismatches."""
        pending = self._pending[upload_id]
        for number, tag in order:
            part = pending.parts.get(number)
            if part is None or etag(part) != tag:
                raise ValueError(f"part {number} is missing or its ETag differs")
        data = b"".join(pending.parts[number] for number, _ in order)
        del self._pending[upload_id]
        # The file is at most the parts' size, so it fits in the room they held.
        self._pending_bytes -= pending.size
        file = StoredFile(pending.file_id, pending.file_name, pending.content_type, data)
        self._keep(file)
        return file

    def clear(self) -> None:
        self._files.clear()
        self._pending.clear()
        self._file_bytes = self._pending_bytes = 0
        self.files_total = self.bytes_total = self.evicted = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "files": self.files_total,
            "bytes": self.bytes_total,
            "stored_files": len(self._files),
            "stored_bytes": self._file_bytes,
            "evicted": self.evicted,
            "multipart_pending": len(self._pending),
        }

    def _keep(self, file: StoredFile) -> None:
        self._files[file.file_id] = file
        self._file_bytes += len(file.data)
        self.files_total += 1
        self.bytes_total += len(file.data)

    def _make_room(self, size: int) -> None:
        if size > self.limit - self._pending_bytes:
            raise TooLarge(f"{size} bytes do not fit in the {self.limit}-byte store")
        while self._files and self._file_bytes + self._pending_bytes + size > self.limit:
            _, oldest = self._files.popitem(last=False)
            self._file_bytes -= len(oldest.data)
            self.evicted += 1
