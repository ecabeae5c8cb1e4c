"""Callers and their tokens: who is calling, and what their role allows.

Tokens are configured as hashes (`AUTH_TOKENS`, or a file in `AUTH_TOKENS_FILE`), one entry per
token: `<name>:<role>:sha256:<hex digest of the token>`, separated by commas or new lines. The
name is the owner of the jobs the token starts; the role is one of

    read     GetJob, ListJobs, WatchJob (and the pages) on its own jobs
    submit   read, plus StartVideoJob, StartStoryJob, RetryFailed, CancelJob, uploads
    admin    submit, on every owner's jobs

A presented token is hashed and compared with every configured digest in constant time (no early
exit), so neither timing nor an error message tells how close a guess was. With no token
configured the service is anonymous: every caller is an admin named "" (and the gateway keeps
to loopback unless told otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from common.errors import PermissionDenied, Unauthenticated

_ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<role>[a-z]+):sha256:(?P<hex>[0-9a-f]{64})$"
)
BEARER = "bearer "
MAX_TOKEN_CHARS = 512


class Role(IntEnum):
    READ = 1
    SUBMIT = 2
    ADMIN = 3


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role
    anonymous: bool = False

    @property
    def sees_everything(self) -> bool:
        """Admins (and everyone, when the service is anonymous) see every owner's jobs."""
        return self.role is Role.ADMIN

    def require(self, role: Role, what: str) -> None:
        if self.role < role:
            raise PermissionDenied(f"{what} needs the {role.name.lower()} role")

    def owns(self, owner: str) -> bool:
        return self.sees_everything or owner == self.name


ANONYMOUS = Caller(name="", role=Role.ADMIN, anonymous=True)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: Role
    digest: bytes


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def hash_entry(name: str, role: Role, token: str) -> str:
    """The configuration line for `token` (what `orchestrator token new` prints)."""
    return f"{name}:{role.name.lower()}:sha256:{digest(token).hex()}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Tokens:
    """The configured tokens; `identify` turns an `authorization` value into a Caller."""

    def __init__(self, entries: Iterable[TokenEntry] = ()) -> None:
        self.entries = tuple(entries)

    @classmethod
    def parse(cls, text: str) -> Tokens:
        """Entries separated by commas, new lines or spaces; ValueError names a bad one by
        position (never echoing it: a misplaced token must not reach a log)."""
        entries: list[TokenEntry] = []
        for position, raw in enumerate(re.split(r"[\s,]+", text.strip()), start=1):
            if not raw or raw.startswith("#"):
                continue
            match = _ENTRY.fullmatch(raw)
            if match is None or match["role"].upper() not in Role.__members__:
                raise ValueError(
                    f"entry {position} is not <name>:<read|submit|admin>:sha256:<64 hex digits>"
                )
            entries.append(
                TokenEntry(match["name"], Role[match["role"].upper()], bytes.fromhex(match["hex"]))
            )
        names = [e.name for e in entries]
        if len(set(zip(names, (e.digest for e in entries), strict=True))) != len(entries):
            raise ValueError("the same token is configured twice")
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def identify(self, authorization: str | None) -> Caller:
        """The caller an `authorization` header value names (Unauthenticated otherwise)."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        if len(authorization) > MAX_TOKEN_CHARS or not authorization.lower().startswith(BEARER):
            raise Unauthenticated("malformed credentials: expected 'Bearer <token>'")
        presented = digest(authorization[len(BEARER) :].strip())
        found: TokenEntry | None = None
        for entry in self.entries:  # every entry, whatever matched: constant time
            if hmac.compare_digest(entry.digest, presented):
                found = entry
        if found is None:
            raise Unauthenticated("unknown or revoked token")
        return Caller(found.name, found.role)
