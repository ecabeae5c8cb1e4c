"""The simulator's knobs: pydantic models validated at start and on every runtime change.

Fault kinds are strings: an HTTP status ("429", "503", ...) or one of the named kinds below.
Which kinds make sense where is checked here, so a rule that could never fire is a 400 at
configuration time instead of a silent no-op during a test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# Monotonic seconds; injectable so tests can drive generations and outages by hand.
Clock = Callable[[], float]

# fal queue calls, OpenAI chat, fal storage (the CDN token from fal's REST host and the CDN
# upload calls), and fal's public webhook keys.
Endpoint = Literal["submit", "status", "result", "cancel", "chat", "upload_token", "upload", "jwks"]
ALL_ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)
Provider = Literal["fal", "openai"]
PROVIDER_ENDPOINTS: dict[Provider, tuple[Endpoint, ...]] = {
    "fal": ("submit", "status", "result", "cancel", "upload_token", "upload", "jwks"),
    "openai": ("chat",),
}

# Answer with an error status after holding the call for `hang_seconds`.
TIMEOUT = "timeout"
# Drop the connection without any HTTP response.
RESET = "reset"
# Process the call normally (a submit is accepted and paid), then hold the answer for
# `hang_seconds`: the client's read timeout fires although the provider did the work.
SLOW_RESPONSE = "slow_response"
# A webhook signature that verifies with no published key: flipped bits, or signed by a key
# that was never published.
SignatureFault = Literal["bad_signature", "unknown_key"]

# Chat only: finish_reason "length" with the JSON cut in the middle.
TRUNCATE = "truncate"
# Chat only: finish_reason "stop" with content that is not JSON.
INVALID_JSON = "invalid_json"
# Submit only: accept and run the request, then fail it (result 422, webhook ERROR).
GENERATION_FAILED = "generation_failed"
# A 401 whose message quotes the credentials the caller sent, as some providers' do: whatever
# the client does with the message must not leak the key.
ECHO_KEY = "echo_key"

NAMED_KINDS = frozenset(
    {TIMEOUT, RESET, SLOW_RESPONSE, TRUNCATE, INVALID_JSON, GENERATION_FAILED, ECHO_KEY}
)
# Kinds that only make sense on one endpoint.
ENDPOINT_ONLY_KINDS: dict[str, Endpoint] = {
    TRUNCATE: "chat",
    INVALID_JSON: "chat",
    GENERATION_FAILED: "submit",
}


def _kind_to_str(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_kind(value: str) -> str:
    if value in NAMED_KINDS or (value.isdigit() and 400 <= int(value) <= 599):
        return value
    raise ValueError(
        f"unknown fault kind {value!r}: use an HTTP status 400-599 or one of {sorted(NAMED_KINDS)}"
    )


FaultKind = Annotated[str, BeforeValidator(_kind_to_str), AfterValidator(_check_kind)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


def applies_to(kind: str, endpoint: Endpoint) -> bool:
    """Whether a fault kind can be injected on an endpoint."""
    only = ENDPOINT_ONLY_KINDS.get(kind)
    return only is None or only == endpoint


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultGroup(_Model):
    """Random faults: each call to one of `endpoints` draws at most one fault from `rates`."""

    endpoints: list[Endpoint] = Field(default_factory=lambda: list(ALL_ENDPOINTS), min_length=1)
    rates: dict[FaultKind, Rate]
    retry_after: float | None = Field(default=None, ge=0.0)
    # fal only: 502/503/504 look like nginx ingress errors (HTML, no x-fal-request-id), which
    # fal-client retries on its own; otherwise they come "from the app" and are not retried.
    ingress: bool = False

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultGroup:
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("rates add up to more than 1")
        for kind, rate in self.rates.items():
            if rate > 0 and not any(applies_to(kind, e) for e in self.endpoints):
                raise ValueError(f"{kind!r} never applies to endpoints {self.endpoints}")
        return self


class Outage(_Model):
    """Every call to `endpoints` between `start` and `start + duration` seconds fails."""

    start: float = Field(default=0.0, ge=0.0, description="seconds from when it is configured")
    duration: float = Field(gt=0.0)
    endpoints: list[Endpoint] = Field(default_factory=lambda: list(ALL_ENDPOINTS), min_length=1)
    status: int | Literal["timeout", "reset"] = 503
    retry_after: float | None = Field(default=None, ge=0.0)
    ingress: bool = False

    @field_validator("status")
    @classmethod
    def _error_status(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 400 <= value <= 599:
            raise ValueError("status must be 400-599, 'timeout' or 'reset'")
        return value

    @property
    def kind(self) -> str:
        return str(self.status)


class Storm(_Model):
    """A 429 storm: from `start` for `duration` seconds every call to `provider` (or to
    `endpoints`; neither: every endpoint) answers 429 with `Retry-After: retry_after`."""

    provider: Provider | None = None
    endpoints: list[Endpoint] | None = Field(default=None, min_length=1)
    start: float = Field(default=0.0, ge=0.0, description="seconds from when it is configured")
    duration: float = Field(gt=0.0)
    retry_after: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _one_target(self) -> Storm:
        if self.provider is not None and self.endpoints is not None:
            raise ValueError("give provider or endpoints, not both")
        return self

    @property
    def covers(self) -> frozenset[Endpoint]:
        if self.provider is not None:
            return frozenset(PROVIDER_ENDPOINTS[self.provider])
        return frozenset(self.endpoints or ALL_ENDPOINTS)


class RateBudget(_Model):
    """OpenAI per-model limits; the defaults are a generous paid tier (gpt-4o-mini, tier 5)."""

    requests_per_minute: int = Field(default=30_000, ge=1)
    tokens_per_minute: int = Field(default=150_000_000, ge=1)


class Rule(_Model):
    """A deterministic fault for calls whose body contains `match`.

    For status/result/cancel calls the match is against the original submit body of the
    request they address. `times` limits how often the rule fires (None: forever).
    """

    endpoint: Endpoint
    match: str = ""
    fault: FaultKind
    code: str | None = Field(default=None, description="OpenAI error code, e.g. insufficient_quota")
    times: int | None = Field(default=None, ge=1)
    retry_after: float | None = Field(default=None, ge=0.0)
    ingress: bool = False

    @model_validator(mode="after")
    def _fault_fits_endpoint(self) -> Rule:
        if not applies_to(self.fault, self.endpoint):
            raise ValueError(
                f"fault {self.fault!r} only applies to {ENDPOINT_ONLY_KINDS[self.fault]}"
            )
        return self


class SimulatorConfig(_Model):
    """Every knob of the simulator; `configure(**changes)` replaces top-level fields."""

    latency: float = Field(default=2.0, ge=0.0, description="fal generation seconds")
    latency_jitter: float = Field(default=0.0, ge=0.0, le=1.0, description="± fraction")
    chat_latency: float = Field(default=0.2, ge=0.0)
    max_concurrency: int = Field(default=0, ge=0, description="0: unlimited")
    webhook_repeats: int = Field(default=1, ge=0)
    webhook_timeout: float = Field(default=5.0, gt=0.0)
    webhook_signing: bool = Field(default=True, description="sign webhooks as fal does")
    webhook_signature_fault: SignatureFault | None = None
    webhook_payload: bool = Field(
        default=True,
        description="an OK webhook carries the result; off: `payload` null and a"
        " `payload_error`, as fal sends when it cannot serialise the result",
    )
    hang_seconds: float = Field(default=30.0, ge=0.0)
    seed: int = 0
    fal_key: SecretStr | None = None
    openai_key: SecretStr | None = None
    public_base_url: str | None = None
    video_file_size: int = Field(default=16_384, ge=64, le=64 * 1024 * 1024)
    call_log_limit: int = Field(default=100_000, ge=0)
    # The in-memory CDN keeps this many bytes; the oldest files make room for new ones.
    upload_store_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    upload_token_ttl: float = Field(default=3600.0, gt=0.0, description="CDN token seconds")
    faults: list[FaultGroup] = Field(default_factory=list)
    outages: list[Outage] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    storms: list[Storm] = Field(default_factory=list)
    # Budgets per model over a one-minute window; a model without an entry gets the default.
    openai_rate_limit: RateBudget = Field(default_factory=RateBudget)
    openai_model_rate_limits: dict[str, RateBudget] = Field(default_factory=dict)

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def merged(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """A validated copy with `changes` replacing top-level fields."""
        return SimulatorConfig.model_validate({**self.model_dump(), **changes})

    def public_dump(self) -> dict[str, Any]:
        """JSON-safe view; keys are shown as set or not, never in clear."""
        return self.model_dump(mode="json")


class ConfigError(ValueError):
    """An environment variable is malformed; the message names it."""


NUMBER_ENV: dict[str, tuple[str, type[float] | type[int]]] = {
    "SIM_LATENCY": ("latency", float),
    "SIM_CHAT_LATENCY": ("chat_latency", float),
    "SIM_SEED": ("seed", int),
}
TEXT_ENV: dict[str, str] = {
    "SIM_FAL_KEY": "fal_key",
    "SIM_OPENAI_KEY": "openai_key",
    "SIM_PUBLIC_URL": "public_base_url",
}


def config_from_env(env: Mapping[str, str]) -> SimulatorConfig:
    """Build the start config: `SIM_CONFIG` (a JSON object) overlaid by the single variables."""
    values: dict[str, Any] = {}
    if raw := env.get("SIM_CONFIG"):
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SIM_CONFIG is not valid JSON: {exc.msg}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("SIM_CONFIG must be a JSON object")
        values.update(loaded)
    fields = {name: field for name, (field, _) in NUMBER_ENV.items()} | TEXT_ENV
    for name, (field, parse) in NUMBER_ENV.items():
        if raw := env.get(name):
            try:
                values[field] = parse(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {parse.__name__}") from None
    for name, field in TEXT_ENV.items():
        if raw := env.get(name):
            values[field] = raw
    try:
        return SimulatorConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        names = [n for n, f in fields.items() if f == first["loc"][0] and env.get(n)]
        raise ConfigError(f"{(names or ['SIM_CONFIG'])[0]}: {where}: {first['msg']}") from None


def parse_addr(raw: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) from SIMULATOR_ADDR."""
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"SIMULATOR_ADDR={raw!r} must be host:port")
    return host.strip("[]") or "127.0.0.1", int(port)
