"""Field checks shared by every request (gRPC and HTTP alike): each has a documented limit, and
anything outside it is InvalidArgument naming the field and why. Nothing here does I/O.

Limits (also in the README's "Input limits" table):

    text fields         no control characters (newlines included), no lone surrogates;
                        a length in characters and in UTF-8 bytes
    job ids             1..64 of [A-Za-z0-9-] (the service makes UUIDs)
    idempotency keys    1..200 printable ASCII characters, no spaces
    fal model ids       owner/app[/path...] of [A-Za-z0-9._-], 2..6 segments, none "." or
                        "..", at most 200 characters; optionally an allow-list
    OpenAI models       1..100 of [A-Za-z0-9._:-]; optionally an allow-list
    URLs                http(s), at most 2048 characters, no credentials, a valid host and
                        port; private, loopback, link-local and non-canonical numeric hosts
                        refused unless allowed (the providers' own hosts always are)
    model arguments     a JSON object, at most 16 KiB, nesting at most 8, keys 1..64
                        characters, finite numbers only, text without control characters
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.errors import InvalidArgument

MAX_URL = 2048
MAX_JOB_ID = 64
MAX_KEY = 200
MAX_MODEL_ID = 200
MAX_MODEL_ARGS_BYTES = 16_384
MAX_MODEL_ARGS_DEPTH = 8
MAX_ARG_KEY = 64
BYTES_PER_CHAR = 4  # a text field's byte limit: its character limit x 4 (UTF-8's widest)

_JOB_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_FAL_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_OPENAI_MODEL = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+))*\.?$", re.IGNORECASE)
_LOCAL_NAMES = ("localhost", ".localhost", ".local", ".internal", ".home.arpa", ".localdomain")


def check_text(
    name: str, value: str, *, max_chars: int, required: bool = False, blank: bool = True
) -> str:
    """`value` if it is text within the limits (`required`: not empty; `blank`: may be only
    spaces)."""
    if required and not value:
        raise InvalidArgument(name, "required")
    if not blank and value and not value.strip():
        raise InvalidArgument(name, "must not be blank")
    if len(value) > max_chars:
        raise InvalidArgument(name, f"at most {max_chars} characters, got {len(value)}")
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") or char in ("\ufffe", "\uffff"):
            raise InvalidArgument(
                name,
                f"character {position + 1} is not allowed (U+{ord(char):04X}: control"
                " characters, newlines included, and invalid Unicode are refused)",
            )
    if len(value.encode("utf-8")) > max_chars * BYTES_PER_CHAR:
        raise InvalidArgument(name, f"at most {max_chars * BYTES_PER_CHAR} bytes of UTF-8")
    return value


def check_job_id(value: str, name: str = "job_id") -> str:
    if not value:
        raise InvalidArgument(name, "required")
    if not _JOB_ID.fullmatch(value):
        raise InvalidArgument(name, f"1..{MAX_JOB_ID} letters, digits and '-' (a job id)")
    return value


def check_key(value: str, name: str = "idempotency_key") -> str:
    if value and not _KEY.fullmatch(value):
        raise InvalidArgument(name, f"1..{MAX_KEY} printable ASCII characters without spaces")
    return value


def check_fal_model(value: str, allowed: frozenset[str], name: str = "model") -> str:
    segments = value.split("/")
    well_formed = (
        len(value) <= MAX_MODEL_ID
        and 2 <= len(segments) <= 6
        and all(_FAL_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)
    )
    if not well_formed:
        raise InvalidArgument(
            name,
            "not a fal model id like 'owner/app/...' (letters, digits, '.', '_', '-' per"
            " segment; no empty, '.' or '..' segments)",
        )
    if allowed and value not in allowed:
        raise InvalidArgument(name, f"{value!r} is not one of the models this service allows")
    return value


def check_openai_model(value: str, allowed: frozenset[str], name: str = "model") -> str:
    if not _OPENAI_MODEL.fullmatch(value):
        raise InvalidArgument(name, "not an OpenAI model name (1..100 of [A-Za-z0-9._:-])")
    if allowed and value not in allowed:
        raise InvalidArgument(name, f"{value!r} is not one of the models this service allows")
    return value


@dataclass(frozen=True)
class UrlPolicy:
    allow_private: bool = False
    # Origins ("https://host:port") always allowed, e.g. the providers' own storage.
    trusted_origins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def trusting(cls, urls: Iterable[str], *, allow_private: bool) -> UrlPolicy:
        return cls(allow_private, frozenset(_origin(u) for u in urls if u))


def check_url(name: str, value: str, policy: UrlPolicy) -> str:
    """The URL, normalised (lower-case scheme and host, default port dropped)."""
    if not value:
        raise InvalidArgument(name, "required: an http or https URL")
    check_text(name, value, max_chars=MAX_URL)
    if any(c.isspace() for c in value):
        raise InvalidArgument(name, "must not contain spaces")
    try:
        parts = urlsplit(value)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidArgument(name, f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidArgument(name, "must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(name, "must not carry credentials (user:password@)")
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}[scheme]
    try:
        ascii_host = host.encode("idna").decode("ascii") if not _is_ip(host) else host
    except UnicodeError:
        raise InvalidArgument(name, "the host name is not valid") from None
    netloc = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    if port is not None and port != default:
        netloc += f":{port}"
    normalised = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    if _origin(normalised) not in policy.trusted_origins and not policy.allow_private:
        reason = _private_host(ascii_host)
        if reason:
            raise InvalidArgument(name, f"{reason} hosts are refused (this service's policy)")
    return normalised


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _private_host(host: str) -> str:
    """Why `host` is not a public address ("" when it is)."""
    if _is_ip(host):
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return "loopback"
        if ip.is_link_local:
            return "link-local"
        if ip.is_private or ip.is_reserved or ip.is_unspecified or ip.is_multicast:
            return "private or reserved"
        return ""
    lowered = host.lower().rstrip(".")
    if lowered == "localhost" or lowered.endswith(_LOCAL_NAMES):
        return "local-network"
    if _NUMERIC_HOST.fullmatch(lowered):
        return "non-canonical numeric"
    return ""


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    host = (parts.hostname or "").lower()
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def check_model_arguments(value: Any, name: str = "model_arguments") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(name, "must be a JSON object")
    _check_json(name, value, depth=1)
    try:
        size = len(json.dumps(value, allow_nan=False).encode())
    except ValueError:
        raise InvalidArgument(name, "numbers must be finite (no NaN or Infinity)") from None
    if size > MAX_MODEL_ARGS_BYTES:
        raise InvalidArgument(name, f"at most {MAX_MODEL_ARGS_BYTES} bytes of JSON, got {size}")
    return value


def _check_json(name: str, value: Any, depth: int) -> None:
    if depth > MAX_MODEL_ARGS_DEPTH:
        raise InvalidArgument(name, f"nested deeper than {MAX_MODEL_ARGS_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise InvalidArgument(name, "keys must be non-empty strings")
            check_text(f"{name}.{key[:MAX_ARG_KEY]}", key, max_chars=MAX_ARG_KEY)
            _check_json(f"{name}.{key}", item, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(f"{name}[{i}]", item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(name, "numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, str):
        check_text(name, value, max_chars=MAX_MODEL_ARGS_BYTES)
    elif value is not None and not isinstance(value, bool | int):
        raise InvalidArgument(name, f"unsupported value of type {type(value).__name__}")
