"""Turn what a provider answered into this layer's errors.

Adapters call these helpers with plain values (status, message, headers, error code) taken from
fal-client, openai or httpx exceptions, so this module depends on none of them.

Status table (`error_from_status`):

    status           raises      error_class      why
    408              transient   TIMEOUT          the server gave up waiting for our request
    409              transient   SERVER_ERROR     both providers' clients retry it (lock, conflict)
    422              transient   UNPROCESSABLE    fal's answer for a generation that failed there
    429              transient   RATE_LIMITED     with code "insufficient_quota": QUOTA, permanent
    500 502 503 504  transient   SERVER_ERROR
    other 5xx        transient   SERVER_ERROR     e.g. 520-524 from the CDN in front of OpenAI
    400              permanent   BAD_REQUEST
    401 403          permanent   AUTH
    402              permanent   QUOTA            Payment Required: billing fixes it, waiting won't
    404              permanent   NOT_FOUND
    other 4xx        permanent   BAD_REQUEST
    below 400        permanent   PROVIDER_FAILED  the call did not do what was asked (a redirect)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import MappingProxyType

from common.resilience.errors import ErrorClass, PermanentError, ProviderError, TransientError

RETRYABLE_STATUSES = frozenset({408, 409, 422, 429, 500, 502, 503, 504})
"""The statuses the design names as transient. Any other 5xx is transient too: use
`is_retryable_status` rather than testing membership here."""

MAX_MESSAGE_CHARS = 500
"""Error messages end up in events and the database; a provider's HTML error page must not."""

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

_STATUS_CLASSES: Mapping[int, ErrorClass] = MappingProxyType(
    {
        400: ErrorClass.BAD_REQUEST,
        401: ErrorClass.AUTH,
        402: ErrorClass.QUOTA,
        403: ErrorClass.AUTH,
        404: ErrorClass.NOT_FOUND,
        408: ErrorClass.TIMEOUT,
        409: ErrorClass.SERVER_ERROR,
        422: ErrorClass.UNPROCESSABLE,
        429: ErrorClass.RATE_LIMITED,
    }
)

_INSUFFICIENT_QUOTA = "insufficient_quota"


def is_retryable_status(status: int) -> bool:
    """True when an HTTP error status is worth retrying after a wait."""
    return status in RETRYABLE_STATUSES or status >= 500


def scrub(text: str, secrets: Iterable[str], *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Return `text` with every secret value replaced by `***`, cut to `limit` characters."""
    # Longest first, so a secret that contains another is removed whole. Empty values are
    # skipped: replacing "" would splice the mask between every character.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    # Cut only after masking: cutting first could leave a secret's prefix unmatched.
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds a provider asks us to wait, or None when it does not say (or says nonsense).

    `retry-after-ms` (milliseconds, OpenAI) wins over `retry-after` (seconds, or an HTTP-date
    turned into seconds from `now()`, never negative). Header names are case-insensitive.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    if (ms := _non_negative_float(lowered.get("retry-after-ms"))) is not None:
        return ms / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    if (seconds := _non_negative_float(value)) is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


def _non_negative_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def error_from_status(
    provider: str,
    status: int,
    message: str,
    headers: Mapping[str, str] = _NO_HEADERS,
    *,
    code: str | None = None,
    secrets: Iterable[str] = (),
    now: Callable[[], float] = time.time,
) -> ProviderError:
    """The error for an HTTP error answer, per the table in this module's docstring.

    `code` is the provider's error code (OpenAI's `error.code`); `secrets` are masked out of
    `message`; `now` is the wall clock used to read an HTTP-date `Retry-After`.
    """
    error_type, error_class = _classify(status, code)
    return error_type(
        scrub(message, secrets),
        provider=provider,
        error_class=error_class,
        status_code=status,
        retry_after=parse_retry_after(headers, now=now),
    )


def _classify(status: int, code: str | None) -> tuple[type[ProviderError], ErrorClass]:
    if status < 400:
        return PermanentError, ErrorClass.PROVIDER_FAILED
    if status == 429 and code == _INSUFFICIENT_QUOTA:
        # An empty balance does not refill by waiting, whatever Retry-After says.
        return PermanentError, ErrorClass.QUOTA
    default = ErrorClass.SERVER_ERROR if status >= 500 else ErrorClass.BAD_REQUEST
    error_type = TransientError if is_retryable_status(status) else PermanentError
    return error_type, _STATUS_CLASSES.get(status, default)


def timeout_error(provider: str, message: str, *, secrets: Iterable[str] = ()) -> TransientError:
    """The error for a call that got no answer in time (ours or the transport's timeout)."""
    return TransientError(
        scrub(message, secrets), provider=provider, error_class=ErrorClass.TIMEOUT
    )


def connection_error(provider: str, message: str, *, secrets: Iterable[str] = ()) -> TransientError:
    """The error for a call that could not reach the provider (refused, reset, DNS, TLS)."""
    return TransientError(
        scrub(message, secrets), provider=provider, error_class=ErrorClass.CONNECTION
    )
