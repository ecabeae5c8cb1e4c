"""Every setting, read once from the environment at a process's edge.

`Settings.from_env()` is called in each `__main__`; everything else receives the object. A
missing or malformed value fails at start with the variable's name. Secrets are `SecretStr`, so
they never show in `repr`, logs or error messages.

Per-kind settings come from the kind registry: each task kind's settings prefix gives
`<PREFIX>_MAX_RETRIES` and `<PREFIX>_BACKOFF_INITIAL` / `_MULTIPLIER` / `_CAP` (defaults from its
spec), and each slot pool gives `<POOL>_CONCURRENCY`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.auth import Tokens
from common.broker import Topology
from common.domain.changes import StoreTimings
from common.domain.kinds import BUILTIN_KINDS, KindRegistry, RetryDefaults
from common.domain.scheduling import BudgetPolicy
from common.resilience import Backoff, BreakerConfig, RetryPolicy


class SettingsError(Exception):
    """The environment holds a missing or malformed setting."""


def _check_addr(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


class KindOptions(BaseModel):
    """The retry settings of one settings prefix (`<PREFIX>_MAX_RETRIES`, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(ge=0, le=10)
    backoff_initial: float = Field(gt=0)
    backoff_multiplier: float = Field(ge=1)
    backoff_cap: float = Field(gt=0)


class PoolOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    concurrency: int = Field(ge=1, le=10_000)


class Settings(BaseSettings):
    """The service's configuration; each field is the upper-cased environment variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # Where state and messages live.
    database_url: str = "sqlite+aiosqlite:///data/orchestrator.db"
    amqp_url: str = "memory://"
    queue_prefix: str = Field("orchestrator", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Listening addresses.
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    # A worker's Prometheus endpoint (HOST:PORT); empty: none. The gateway serves /metrics on
    # its HTTP port.
    metrics_addr: str = ""
    # Base URL at which providers reach this HTTP port (fal webhooks); empty: no webhooks.
    public_http_url: str = ""

    # fal.ai
    fal_key: SecretStr | None = None
    fal_queue_url: str = "https://queue.fal.run"
    fal_model: str = "fal-ai/kling-video/v1/standard/image-to-video"
    fal_timeout: float = Field(30.0, gt=0)
    fal_poll_interval: float = Field(2.0, gt=0)
    # Seconds from a submit to its first status check; unset: the poll interval. 0 checks right
    # away in the same step (models that answer in well under a poll interval).
    fal_first_poll_delay: float | None = Field(None, ge=0)
    # Send a second copy of a slow or failed status check / result fetch (common.resilience.
    # hedging); never of a submit.
    fal_hedged_reads: bool = True

    # OpenAI
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_timeout: float = Field(120.0, gt=0)

    # Files
    output_root: Path = Path("output")

    # Retries (backoff with full jitter; per kind, see the module docstring) and the breaker.
    max_retry_after: float = Field(120.0, gt=0)
    breaker_window: float = Field(30.0, gt=0)
    breaker_min_calls: int = Field(10, ge=1)
    breaker_failure_rate: float = Field(0.5, gt=0, le=1)
    # High enough that random failures under heavy concurrency never line up this long; a real
    # outage gets there in moments (and the failure rate catches slow providers).
    breaker_consecutive_failures: int = Field(20, ge=0)
    breaker_open_seconds: float = Field(10.0, gt=0)
    breaker_half_open_probes: int = Field(2, ge=1)

    # Limits on requests.
    max_video_segments: int = Field(10_000, ge=1)
    max_story_segments: int = Field(1_000, ge=1)

    # Workers and lifecycle.
    # Video messages are short steps (nothing is held while fal generates), so many run at once.
    video_prefetch: int = Field(256, ge=1)
    story_prefetch: int = Field(8, ge=1)
    # At least the longest provider call, so SIGTERM never cuts a submit between paying and
    # recording it.
    drain_seconds: float = Field(130.0, ge=0)
    sweep_interval: float = Field(5.0, gt=0)
    stale_after: float = Field(60.0, gt=0)
    # Spend and fairness (see README "Spend and fairness").
    # Provider slots one job may hold at once, whatever it asks (0: no cap but the pool's).
    max_job_concurrency: int = Field(0, ge=0, le=10_000)
    # Retries may add at most this fraction of a provider's calls over the last minute,
    # fleet-wide (with RETRY_BUDGET_FLOOR retries a minute always allowed).
    retry_budget_ratio: float = Field(0.1, ge=0, le=10)
    retry_budget_floor: int = Field(10, ge=0)
    # Per-minute budgets per provider and model, shared by every worker (0: none configured;
    # OpenAI's are also learned from its x-ratelimit headers).
    openai_rpm: int = Field(0, ge=0)
    openai_tpm: int = Field(0, ge=0)
    fal_rpm: int = Field(0, ge=0)
    # How long a succeeded task's result may be reused by an identical task (jobs that ask).
    reuse_ttl: float = Field(86_400.0, gt=0)
    # With webhooks on: how long a task whose worker died mid-submit waits for fal's webhook
    # to name the request before submitting (and paying) again.
    webhook_adopt_window: float = Field(300.0, ge=0)
    # A worker renews its lease every third of this; a task mid-call whose worker's lease ran
    # out is taken over at once (instead of after STALE_AFTER + the call timeout).
    worker_lease_seconds: float = Field(6.0, ge=1, le=300)
    job_retention: float = Field(3600.0, gt=0)
    log_level: str = Field("INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR)$")
    # "text" (human-readable lines) or "json" (one JSON object per line).
    log_format: str = Field("text", pattern=r"^(text|json)$")

    # Access control and exposure (see README "Security").
    # Token hashes, `<name>:<read|submit|admin>:sha256:<hex>`, comma or newline separated.
    auth_tokens: SecretStr | None = None
    auth_tokens_file: Path | None = None
    # Serve without tokens on a non-loopback address (otherwise the gateway refuses to start).
    allow_anonymous: bool = False
    # TLS for the gRPC and HTTP ports: PEM certificate chain and key (both or neither).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # URLs a request may name (arena images): private, loopback and link-local hosts are
    # refused unless this is set; the providers' own hosts are always allowed.
    allow_private_urls: bool = False
    # Optional allow-lists of model ids (comma separated); empty: any well-formed id.
    fal_models: str = ""
    openai_models: str = ""
    # Per caller (token, or peer address when anonymous): requests per second (token bucket
    # with `rate_limit_burst` capacity) and concurrent WatchJob / event streams.
    rate_limit_per_second: float = Field(20.0, gt=0)
    rate_limit_burst: int = Field(60, ge=1)
    max_streams_per_caller: int = Field(100, ge=1)
    grpc_max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # HTTP: seconds to receive a request's body, and an idle keep-alive connection's life.
    http_read_timeout: float = Field(30.0, gt=0)
    http_idle_timeout: float = Field(60.0, gt=0)
    # Signs the per-task webhook URLs handed to fal; required when PUBLIC_HTTP_URL is set.
    webhook_secret: SecretStr | None = None
    # fal's public keys for webhook signatures, and how far a webhook's timestamp may drift.
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    fal_webhook_tolerance: float = Field(300.0, gt=0)

    @field_validator("grpc_addr", "http_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return _check_addr(value)

    @field_validator("metrics_addr")
    @classmethod
    def _optional_addr(cls, value: str) -> str:
        return _check_addr(value) if value else value

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together")
        if self.public_http_url and self.webhook_secret is None:
            raise ValueError("WEBHOOK_SECRET is required when PUBLIC_HTTP_URL is set")
        return self

    @field_validator("fal_queue_url", "openai_base_url", "fal_jwks_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    _kinds: KindRegistry = PrivateAttr(default_factory=lambda: BUILTIN_KINDS)
    _kind_options: dict[str, KindOptions] = PrivateAttr(default_factory=dict)
    _pool_options: dict[str, PoolOptions] = PrivateAttr(default_factory=dict)
    _tokens: Tokens = PrivateAttr(default_factory=Tokens)

    @classmethod
    def from_env(cls, *, kinds: KindRegistry = BUILTIN_KINDS, **overrides: Any) -> Self:
        """Read the environment (and `overrides`, by lower-case setting name) for `kinds`;
        raise SettingsError naming each bad variable."""
        per_kind = {name: value for name, value in overrides.items() if _kind_setting(kinds, name)}
        problems: list[str] = []
        try:
            settings = cls(**{k: v for k, v in overrides.items() if k not in per_kind})
        except ValidationError as exc:
            problems += _problems(exc)
        options: dict[str, KindOptions] = {}
        for prefix, defaults in kinds.prefixes().items():
            values = _read_group(prefix, _defaults(defaults), per_kind)
            try:
                options[prefix] = KindOptions(**values)
            except ValidationError as exc:
                problems += _problems(exc, prefix)
        pools: dict[str, PoolOptions] = {}
        for pool, limit in kinds.pools.items():
            try:
                pools[pool] = PoolOptions(**_read_group(pool, {"concurrency": limit}, per_kind))
            except ValidationError as exc:
                problems += _problems(exc, pool)
        tokens = Tokens()
        if not problems:
            try:
                tokens = _read_tokens(settings)
            except (OSError, ValueError) as exc:
                problems.append(f"AUTH_TOKENS: {exc}")
        if problems:
            raise SettingsError(f"invalid settings: {'; '.join(problems)}")
        settings._tokens = tokens
        settings._kinds = kinds
        settings._kind_options = options
        settings._pool_options = pools
        return settings

    # Derived policies, built in one place.
    @property
    def kinds(self) -> KindRegistry:
        return self._kinds

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.queue_prefix, queues=self._kinds.queues)

    def kind_options(self, kind: str) -> KindOptions:
        prefix = self._kinds[kind].prefix
        if prefix not in self._kind_options:  # built without from_env: the spec's defaults
            self._kind_options[prefix] = KindOptions(**_defaults(self._kinds[kind].retry))
        return self._kind_options[prefix]

    def max_retries(self, kind: str) -> int:
        return self.kind_options(kind).max_retries

    def pool_limit(self, pool: str) -> int:
        found = self._pool_options.get(pool)
        return found.concurrency if found is not None else self._kinds.pools[pool]

    @property
    def store_timings(self) -> StoreTimings:
        # A QUEUED task's message sits in RabbitMQ durably; re-issue it only after much longer.
        return StoreTimings(stale_after=self.stale_after, queued_stale_after=self.stale_after * 10)

    def retry_policy(self, kind: str) -> RetryPolicy:
        """The retry policy of one kind of task, from its prefix's settings."""
        o = self.kind_options(kind)
        return RetryPolicy(
            backoff=Backoff(
                initial=o.backoff_initial,
                multiplier=o.backoff_multiplier,
                cap=o.backoff_cap,
                max_retries=o.max_retries,
            ),
            max_retry_after=self.max_retry_after,
        )

    @property
    def breaker(self) -> BreakerConfig:
        return BreakerConfig(
            window_seconds=self.breaker_window,
            min_calls=self.breaker_min_calls,
            failure_rate=self.breaker_failure_rate,
            consecutive_failures=self.breaker_consecutive_failures,
            open_seconds=self.breaker_open_seconds,
            half_open_probes=self.breaker_half_open_probes,
        )

    @property
    def budget_policy(self) -> BudgetPolicy:
        return BudgetPolicy(
            retry_ratio=self.retry_budget_ratio, retry_floor=self.retry_budget_floor
        )

    @property
    def budget_limits(self) -> dict[str, tuple[int, int]]:
        """Provider -> configured (requests, tokens) per minute."""
        return {"openai": (self.openai_rpm, self.openai_tpm), "fal": (self.fal_rpm, 0)}

    @property
    def tokens(self) -> Tokens:
        return self._tokens

    def secrets(self) -> list[str]:
        """Secret values, for scrubbing them out of provider error messages."""
        values = (self.fal_key, self.openai_api_key, self.webhook_secret)
        return [s.get_secret_value() for s in values if s]

    def allowed_models(self, provider: str) -> frozenset[str]:
        raw = {"fal": self.fal_models, "openai": self.openai_models}.get(provider, "")
        return frozenset(m.strip() for m in raw.split(",") if m.strip())


def _defaults(retry: RetryDefaults) -> dict[str, Any]:
    return {
        "max_retries": retry.max_retries,
        "backoff_initial": retry.backoff_initial,
        "backoff_multiplier": retry.backoff_multiplier,
        "backoff_cap": retry.backoff_cap,
    }


def _kind_setting(kinds: KindRegistry, name: str) -> bool:
    groups = [*kinds.prefixes(), *kinds.pools]
    return any(name.lower().startswith(f"{group.lower()}_") for group in groups) and (
        name.lower() not in Settings.model_fields
    )


def _read_group(
    group: str, defaults: dict[str, Any], overrides: Mapping[str, object]
) -> dict[str, Any]:
    """`defaults`, overridden by `<GROUP>_<NAME>` from the environment, then by `overrides`."""
    environ = {k.upper(): v for k, v in os.environ.items()}
    values = dict(defaults)
    for name in defaults:
        key = f"{group}_{name}"
        if key.upper() in environ:
            values[name] = environ[key.upper()]
        for given, value in overrides.items():
            if given.lower() == key.lower():
                values[name] = value
    return values


def _problems(exc: ValidationError, group: str = "") -> list[str]:
    prefix = f"{group}_" if group else ""
    problems = []
    for err in exc.errors():
        message = str(err["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err["loc"]).upper()
        problems.append(f"{prefix.upper()}{where}: {message}" if where else message)
    return problems


def _read_tokens(settings: Settings) -> Tokens:
    text = settings.auth_tokens.get_secret_value() if settings.auth_tokens else ""
    if settings.auth_tokens_file is not None:
        text += "\n" + settings.auth_tokens_file.read_text(encoding="utf-8")
    return Tokens.parse(text)
