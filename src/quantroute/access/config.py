"""Typed configuration of access control: API keys, quotas, request caps, backend credentials.

The ``access:`` section of the gateway config. Every model is frozen and rejects unknown keys, like
the rest of :mod:`quantroute.config`. Raw keys never appear here: a key is given as its SHA-256
(``sha256``), or as the name of an environment variable / a file (a mounted Secret) holding it, which
the key store reads once, hashes and forgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantroute.extras import REDIS_HINT, installed

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""Key names become metric labels and log fields: short, printable, no spaces."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuotaLimits(_Frozen):
    """Per-key limits; an unset limit is not enforced."""

    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    """Prompt tokens (estimated at admission) plus completion tokens (from the response's usage)."""
    concurrent_requests: PositiveInt | None = None

    @property
    def unlimited(self) -> bool:
        """No limit set: nothing to count for the key (its requests skip admission)."""
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.concurrent_requests is None
        )

    @property
    def counted_per_minute(self) -> bool:
        """Whether a key under these limits has per-minute counts to show (the
        ``x-ratelimit-*`` headers on its answers)."""
        return bool(self.requests_per_minute or self.tokens_per_minute)


class ApiKeySpec(_Frozen):
    """One client key: where its secret comes from, what it may use, its limits."""

    name: str = Field(pattern=KEY_NAME)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    key_env: str | None = Field(default=None, min_length=1)
    key_file: Path | None = None
    models: tuple[str, ...] = Field(min_length=1)
    """Group names, served model names or backend ids this key may put in ``model``; ``*``: all.
    A group named here also allows pinning any backend of that group by its model name."""
    admin: bool = False
    """May call /admin/*, /v1/route/explain (and /metrics on the main port)."""
    revoked: bool = False
    limits: QuotaLimits = QuotaLimits()
    latency_class: Literal["interactive", "batch"] | None = None
    """Used when the request has no ``x-quantroute-priority`` header."""
    priority: int = Field(default=0, ge=-100, le=100)
    """Order in the flow-control queue among requests of the same latency class (interactive
    always before batch): higher first, then first come first served."""

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeySpec:
        given = [s for s in (self.sha256, self.key_env, self.key_file) if s is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of sha256, key_env, key_file")
        return self


class KeysFile(_Frozen):
    """The YAML of ``access.keys_file`` (typically a mounted Secret): ``keys: [...]``, or the list
    alone (what ``quantroute gen-key >> keys.yaml`` builds)."""

    keys: tuple[ApiKeySpec, ...] = ()


class QuotaConfig(_Frozen):
    redis_url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://")
    """Share the counters between replicas through this Redis; unset: in this process's memory."""
    redis_timeout_s: PositiveFloat = 1.0
    """Bound on each quota step on Redis (connect, commands): no request waits longer on Redis.
    It is wall time on the gateway's event loop, so a saturated gateway reaches it sooner than
    Redis does; too low a bound sends a busy replica to local counting."""
    redis_retry_s: PositiveFloat = 5.0
    """After a Redis error, requests skip Redis for this long before it is tried again."""
    on_redis_error: Literal["local", "refuse"] = "local"
    """local: count in this replica's memory meanwhile (limits become per replica); refuse: 503."""
    reserve_completion: bool = True
    """Tokens charged at admission: the prompt estimate plus the completion the request may
    produce (its max_tokens, else policy.default_max_tokens), corrected to the real usage when
    the response ends. false: the prompt estimate alone (then in-flight completions can pass the
    limit: measured ×1.11 at 2× offered load, benchmarks/access)."""
    window_s: PositiveInt = 60
    """Length of the quota window; 60 makes the limits per minute (shorter only for tests)."""
    key_prefix: str = Field(default="quantroute", pattern=r"^[A-Za-z0-9:._-]+$")

    @model_validator(mode="after")
    def _redis_client_installed(self) -> QuotaConfig:
        if self.redis_url is not None and not installed("redis"):
            raise ValueError(f"redis_url needs the Redis client, not installed: {REDIS_HINT}")
        return self


class RequestCaps(_Frozen):
    """Upper bounds on what one request may ask of a group (``*``: every group without its own)."""

    group: str = "*"
    max_tokens: PositiveInt | None = None
    n: PositiveInt | None = None
    messages: PositiveInt | None = None


class BackendCredential(_Frozen):
    """The key the gateway sends to a backend (vLLM ``--api-key``), from env or a file."""

    api_key_env: str | None = Field(default=None, min_length=1)
    api_key_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BackendCredential:
        if (self.api_key_env is None) == (self.api_key_file is None):
            raise ValueError("give exactly one of api_key_env, api_key_file")
        return self


class UpstreamAuthConfig(_Frozen):
    default: BackendCredential | None = None
    """For every backend without its own entry (discovered ones included)."""
    backends: dict[str, BackendCredential] = {}
    """Per backend id."""


DecisionVisibility = Literal["all", "admin", "off"]


class AccessConfig(_Frozen):
    keys: tuple[ApiKeySpec, ...] = ()
    keys_file: Path | None = None
    """YAML with ``keys: [...]`` (e.g. a mounted Secret); re-read when it changes."""
    open: bool = False
    """Serve without keys on a non-loopback address: only when this is set on purpose."""
    decision_header: DecisionVisibility = "admin"
    """Who sees x-quantroute-decision and the per-backend reasons of a 503 (without keys
    configured every caller counts as admin)."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve /metrics only on this port (no key); the main port then has no /metrics."""
    quotas: QuotaConfig = QuotaConfig()
    request_caps: tuple[RequestCaps, ...] = ()
    upstream_auth: UpstreamAuthConfig = UpstreamAuthConfig()

    @property
    def keys_enabled(self) -> bool:
        return bool(self.keys) or self.keys_file is not None

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: object) -> object:
        if isinstance(data, dict) and "max_body_bytes" in data:
            raise ValueError(
                "max_body_bytes moved to resilience.client.max_body_bytes (the one body-size "
                "limit, counted while the body is read)"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AccessConfig:
        names = [k.name for k in self.keys]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate key name(s): {', '.join(dup)}")
        groups = [c.group for c in self.request_caps]
        if len(set(groups)) != len(groups):
            raise ValueError("request_caps: one entry per group")
        return self
