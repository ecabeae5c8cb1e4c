"""Error tree and classification: statuses, Retry-After, secret scrubbing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.resilience import (
    MAX_MESSAGE_CHARS,
    RETRYABLE_STATUSES,
    CircuitOpenError,
    ErrorClass,
    PermanentError,
    ProviderError,
    TransientError,
    connection_error,
    error_from_status,
    is_retryable_status,
    parse_retry_after,
    scrub,
    timeout_error,
)

# 2015-10-21 07:28:00 UTC
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
DATE_TS = 1445412480.0


def fixed(t: float) -> Callable[[], float]:
    return lambda: t


# --- error tree ---------------------------------------------------------------------------------


def test_tree_and_retryable_flags() -> None:
    transient = TransientError("x", provider="fal", error_class=ErrorClass.TIMEOUT)
    permanent = PermanentError("y", provider="openai", error_class=ErrorClass.AUTH, status_code=401)
    assert isinstance(transient, ProviderError) and transient.retryable
    assert isinstance(permanent, ProviderError) and not permanent.retryable
    assert str(permanent) == "y"
    assert permanent.status_code == 401 and permanent.retry_after is None
    assert "error_class='auth'" in repr(permanent)
    assert not issubclass(CircuitOpenError, ProviderError)


def test_base_cannot_be_raised_directly() -> None:
    with pytest.raises(TypeError):
        ProviderError("x", provider="fal", error_class=ErrorClass.INTERNAL)


def test_circuit_open_error_carries_name_and_wait() -> None:
    error = CircuitOpenError("fal:kling", 3.25)
    assert (error.name, error.retry_in) == ("fal:kling", 3.25)
    assert "fal:kling" in str(error) and "3.2" in str(error)


def test_error_class_values_are_stable_lower_case_strings() -> None:
    assert {c.value for c in ErrorClass} == {
        "rate_limited", "timeout", "connection", "server_error", "unprocessable", "bad_request",
        "auth", "not_found", "quota", "invalid_output", "provider_failed", "internal",
        "dependency_failed", "output", "deadline_exceeded",
    }  # fmt: skip
    assert ErrorClass("quota") is ErrorClass.QUOTA
    assert f"{ErrorClass.TIMEOUT}" == "timeout"


# --- statuses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "error_class"),
    [
        (408, TransientError, ErrorClass.TIMEOUT),
        (409, TransientError, ErrorClass.SERVER_ERROR),
        (422, TransientError, ErrorClass.UNPROCESSABLE),
        (429, TransientError, ErrorClass.RATE_LIMITED),
        (500, TransientError, ErrorClass.SERVER_ERROR),
        (502, TransientError, ErrorClass.SERVER_ERROR),
        (503, TransientError, ErrorClass.SERVER_ERROR),
        (504, TransientError, ErrorClass.SERVER_ERROR),
        (520, TransientError, ErrorClass.SERVER_ERROR),
        (400, PermanentError, ErrorClass.BAD_REQUEST),
        (401, PermanentError, ErrorClass.AUTH),
        (402, PermanentError, ErrorClass.QUOTA),
        (403, PermanentError, ErrorClass.AUTH),
        (404, PermanentError, ErrorClass.NOT_FOUND),
        (410, PermanentError, ErrorClass.BAD_REQUEST),
        (413, PermanentError, ErrorClass.BAD_REQUEST),
        (302, PermanentError, ErrorClass.PROVIDER_FAILED),
    ],
)
def test_error_from_status_table(
    status: int, error_type: type[ProviderError], error_class: ErrorClass
) -> None:
    error = error_from_status("fal", status, "boom")
    assert type(error) is error_type
    assert error.error_class is error_class
    assert (error.provider, error.status_code, error.message) == ("fal", status, "boom")
    assert error.retryable is is_retryable_status(status)


def test_retryable_statuses_are_the_designed_set() -> None:
    assert frozenset({408, 409, 422, 429, 500, 502, 503, 504}) == RETRYABLE_STATUSES
    assert all(is_retryable_status(s) for s in RETRYABLE_STATUSES)
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404))


def test_insufficient_quota_is_permanent_even_with_retry_after() -> None:
    error = error_from_status(
        "openai", 429, "quota", {"retry-after": "20"}, code="insufficient_quota"
    )
    assert isinstance(error, PermanentError)
    assert error.error_class is ErrorClass.QUOTA
    assert error.retry_after == 20.0


def test_other_429_codes_stay_transient() -> None:
    error = error_from_status("openai", 429, "slow down", code="rate_limit_exceeded")
    assert isinstance(error, TransientError)
    assert error.error_class is ErrorClass.RATE_LIMITED


def test_error_from_status_parses_retry_after_and_scrubs() -> None:
    error = error_from_status(
        "openai", 503, "bad key sk-secret", {"Retry-After-Ms": "1500"}, secrets=["sk-secret"]
    )
    assert error.retry_after == 1.5
    assert error.message == "bad key ***"


def test_error_from_status_reads_dates_with_the_injected_clock() -> None:
    error = error_from_status("fal", 429, "x", {"retry-after": DATE}, now=fixed(DATE_TS - 7))
    assert error.retry_after == pytest.approx(7.0)


def test_transport_helpers() -> None:
    timeout = timeout_error("fal", "read timed out for Key k-123", secrets=["k-123"])
    connection = connection_error("openai", "connection reset")
    assert isinstance(timeout, TransientError) and timeout.error_class is ErrorClass.TIMEOUT
    assert timeout.message == "read timed out for Key ***"
    assert isinstance(connection, TransientError)
    assert connection.error_class is ErrorClass.CONNECTION
    assert timeout.status_code is None and connection.status_code is None


# --- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"Retry-After": "3"}, 3.0),
        ({"RETRY-AFTER-MS": "250"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # garbage ms falls back
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({"x-request-id": "abc"}, None),
    ],
)
def test_parse_retry_after_values(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=fixed(DATE_TS)) == expected


def test_parse_retry_after_http_date_is_seconds_from_now() -> None:
    assert parse_retry_after({"retry-after": DATE}, now=fixed(DATE_TS - 30)) == pytest.approx(30)


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after({"Retry-After": DATE}, now=fixed(DATE_TS + 60)) == 0.0


def test_parse_retry_after_naive_date_is_read_as_gmt() -> None:
    # "-0000" makes email.utils return a naive datetime; HTTP-dates are GMT regardless.
    naive = "Wed, 21 Oct 2015 07:28:00 -0000"
    assert parse_retry_after({"retry-after": naive}, now=fixed(DATE_TS - 4)) == pytest.approx(4)


# --- scrub --------------------------------------------------------------------------------------


def test_scrub_removes_every_occurrence_of_every_secret() -> None:
    text = "Authorization: Key fal-abc123 / Bearer sk-xyz / again fal-abc123"
    assert (
        scrub(text, ["fal-abc123", "sk-xyz"]) == "Authorization: Key *** / Bearer *** / again ***"
    )


def test_scrub_prefers_the_longest_secret() -> None:
    assert scrub("token sk-abcdef", ["sk-abc", "sk-abcdef"]) == "token ***"


def test_scrub_ignores_empty_secrets() -> None:
    assert scrub("unchanged", ["", ""]) == "unchanged"


def test_scrub_truncates_after_masking() -> None:
    secret = "s" * 40
    text = "x" * (MAX_MESSAGE_CHARS - 10) + secret
    out = scrub(text, [secret])
    assert secret[:5] not in out
    assert len(out) <= MAX_MESSAGE_CHARS

    long = scrub("y" * 10_000, [])
    assert len(long) == MAX_MESSAGE_CHARS and long.endswith("…")
    assert scrub("abcdef", [], limit=4) == "abc…"
