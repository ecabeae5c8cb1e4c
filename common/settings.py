"""Every setting, read once from the environment at a process's edge.

`Settings.from_env()` is called in each `__main__`; everything else receives the object. A
missing or malformed value fails at start with the variable's name. Secrets are `SecretStr`, so
they never show in `repr`, logs or error messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.broker import Topology
from common.resilience import Backoff, BreakerConfig, RetryPolicy
from common.store.ledger import StoreTimings


class SettingsError(Exception):
    """The environment holds a missing or malformed setting."""


def _check_addr(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


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
    # Base URL at which providers reach this HTTP port (fal webhooks); empty: no webhooks.
    public_http_url: str = ""

    # fal.ai
    fal_key: SecretStr | None = None
    fal_queue_url: str = "https://queue.fal.run"
    fal_model: str = "fal-ai/kling-video/v1/standard/image-to-video"
    fal_timeout: float = Field(30.0, gt=0)
    fal_concurrency: int = Field(50, ge=1, le=10_000)
    fal_poll_interval: float = Field(2.0, gt=0)
    # Seconds from a submit to its first status check; unset: the poll interval. 0 checks right
    # away in the same step (models that answer in well under a poll interval).
    fal_first_poll_delay: float | None = Field(None, ge=0)

    # OpenAI
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_timeout: float = Field(120.0, gt=0)

    # Files
    output_root: Path = Path("output")

    # Retries (backoff with full jitter) and the circuit breaker.
    video_max_retries: int = Field(3, ge=0, le=10)
    video_backoff_initial: float = Field(1.0, gt=0)
    video_backoff_multiplier: float = Field(2.0, ge=1)
    video_backoff_cap: float = Field(30.0, gt=0)
    story_max_retries: int = Field(3, ge=0, le=10)
    story_backoff_initial: float = Field(2.0, gt=0)
    story_backoff_multiplier: float = Field(2.0, ge=1)
    story_backoff_cap: float = Field(30.0, gt=0)
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
    job_retention: float = Field(3600.0, gt=0)
    log_level: str = "INFO"

    @field_validator("grpc_addr", "http_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return _check_addr(value)

    @field_validator("fal_queue_url", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @classmethod
    def from_env(cls, **overrides: object) -> Self:
        """Read the environment; raise SettingsError naming each bad variable."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                for err in exc.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from None

    # Derived policies, built in one place.
    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.queue_prefix)

    @property
    def store_timings(self) -> StoreTimings:
        # A QUEUED task's message sits in RabbitMQ durably; re-issue it only after much longer.
        return StoreTimings(stale_after=self.stale_after, queued_stale_after=self.stale_after * 10)

    @property
    def video_retry(self) -> RetryPolicy:
        return self._retry("video")

    @property
    def story_retry(self) -> RetryPolicy:
        return self._retry("story")

    def _retry(self, kind: str) -> RetryPolicy:
        """The retry policy of one kind of task, from its `<KIND>_BACKOFF_*` settings."""
        return RetryPolicy(
            backoff=Backoff(
                initial=getattr(self, f"{kind}_backoff_initial"),
                multiplier=getattr(self, f"{kind}_backoff_multiplier"),
                cap=getattr(self, f"{kind}_backoff_cap"),
                max_retries=getattr(self, f"{kind}_max_retries"),
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

    def secrets(self) -> list[str]:
        """Secret values, for scrubbing them out of provider error messages."""
        return [s.get_secret_value() for s in (self.fal_key, self.openai_api_key) if s]
