"""Typed settings of the gateway's fault handling (the ``resilience:`` section of the config).

Every default is chosen so that a legitimate request is never cut: limits sit far above what an
OpenAI-compatible client sends, and timeouts leave room for a long generation on a busy GPU.
Each model is frozen and rejects unknown keys, like the rest of the config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from quantroute.base import FrozenModel

Seconds = Annotated[float, Field(gt=0.0)]
Share = Annotated[float, Field(gt=0.0, le=1.0)]
MiB = 1024 * 1024


class _Settings(FrozenModel):
    pass


class OutlierDetection(_Settings):
    """Passive health: eject a backend from routing on what its answers show (Envoy-style)."""

    enabled: bool = True
    consecutive_failures: int = Field(default=5, ge=1)
    """Connect errors, resets, 5xx (503 excepted) and timeouts in a row that eject a backend."""
    base_ejection_s: Seconds = 30.0
    """An ejection lasts this long times the backend's ejection count (Envoy's base_ejection_time)."""
    max_ejection_s: Seconds = 300.0
    max_ejection_share: Share = 0.5
    """Never eject more than this share of a group's backends (at least one, never the last)."""
    held_ejection_s: Seconds = 5.0
    """An ejection the share held back is made when the group has room within this long of the
    backend's latest failure (a dead backend holding the slot is marked down within
    ``policy.down_after_failures`` scrapes); older evidence is let go, since a backend's
    successes may take a whole stream to come in and so cannot be waited for."""
    backpressure_s: Seconds = 2.0
    """429 and 503 steer traffic away for this long (or the answer's Retry-After, up to
    ``max_backpressure_s``); they are backpressure, not breakage, and never eject."""
    max_backpressure_s: Seconds = 30.0
    suspect_s: Annotated[float, Field(ge=0.0)] = 0.25
    """After a failure, routing prefers other backends for this long (soft): a backend failing
    fast looks idle, and would otherwise draw a herd of first attempts before it is ejected."""
    slow_start_s: Annotated[float, Field(ge=0.0)] = 30.0
    """After an ejection the backend is on probation for this long: its share of traffic ramps
    from ``slow_start_min_weight`` up to its full share, and one failure ejects it again."""
    slow_start_min_weight: Share = 0.1
    latency_outliers: bool = True
    latency_factor: Annotated[float, Field(gt=1.0)] = 3.0
    """A backend whose TTFT or time per output token exceeds this multiple of its variant
    peers' median (and a floor above it) is ejected for ``latency_ejection_s``."""
    latency_floor_s: Annotated[float, Field(ge=0.0)] = 0.25
    """TTFT floor: a backend is no outlier while within this of its peers' median."""
    per_token_floor_s: Annotated[float, Field(ge=0.0)] = 0.02
    latency_min_samples: int = Field(default=20, ge=1)
    latency_ejection_s: Seconds = 60.0
    latency_load_slack: Annotated[float, Field(ge=1.0)] = 1.5
    """A backend is judged a latency outlier only at comparable load: its average in-flight
    requests at most this multiple of its peers' (plus one)."""
    latency_decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    """Weight of a new sample in the backend's moving average (exponential)."""

    @model_validator(mode="after")
    def _ordered(self) -> OutlierDetection:
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError("max_ejection_s must be >= base_ejection_s")
        if self.max_backpressure_s < self.backpressure_s:
            raise ValueError("max_backpressure_s must be >= backpressure_s")
        return self


class RetryBudget(_Settings):
    """Retries at most ``ratio`` of the requests seen over the last ``window_s`` (Envoy's retry
    budget), but always at least ``min_retries`` in that window, so a lone failure is retried."""

    ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    window_s: Seconds = 10.0
    min_retries: int = Field(default=10, ge=0)


class ClientLimits(_Settings):
    """What one client connection may cost the gateway before it is answered or cut."""

    header_timeout_s: Seconds = 10.0
    """From the first byte of a request (or the connection's opening) to its last header."""
    keep_alive_s: Seconds = 75.0
    """Idle time allowed between two requests on one connection. Longer than clients keep idle
    connections (httpx, and so the OpenAI SDK: 5 s), as nginx's 75 s is: a server that closes
    first races the client's next request on that connection (uvicorn's default is 5 s)."""
    body_idle_s: Seconds = 30.0
    """Longest gap between two pieces of a request body."""
    body_timeout_s: Seconds = 120.0
    """Whole request body, from the end of the headers."""
    max_body_bytes: int = Field(default=16 * MiB, ge=1024)
    """Counted while reading, chunked bodies included; over it: 413."""
    max_buffered_body_bytes: int = Field(default=64 * MiB, ge=1024)
    """All bodies being read at once, together; a body that would pass it: 503 with
    Retry-After (ten slow 16 MiB uploads must not hold 160 MiB)."""
    max_concurrent_requests: int = Field(default=2048, ge=1)
    """Per process; over it: 503 with Retry-After. Probes and /metrics are not counted."""
    retry_after_s: int = Field(default=1, ge=1)
    max_json_depth: int = Field(default=64, ge=4)
    max_messages: int = Field(default=2048, ge=1)


class UpstreamLimits(_Settings):
    """Bounds on what the gateway holds for a backend's answer."""

    max_sse_event_bytes: int = Field(default=4 * MiB, ge=1024)
    """An SSE event longer than this without a separator ends the stream with an error event."""
    max_body_bytes: int = Field(default=64 * MiB, ge=1024)
    """A non-streaming answer longer than this is a 502."""
    connections_per_backend: int = Field(default=1024, ge=0)
    """Open connections to one backend (0: unlimited). Needs a restart to change."""


class DrainSettings(_Settings):
    """SIGTERM: /ready turns 503 at once; the listener keeps accepting for ``announce_s`` (so the
    load balancer sees the pod leave first), then closes; open requests get ``deadline_s``."""

    announce_s: Annotated[float, Field(ge=0.0)] = 5.0
    deadline_s: Seconds = 600.0


class ReloadSettings(_Settings):
    """Hot reload of the whole config file (also on SIGHUP)."""

    watch: bool = True
    poll_s: Seconds = 2.0


MetricsOutage = Literal["fail_open", "fail_closed"]


class ResilienceSettings(_Settings):
    outlier_detection: OutlierDetection = OutlierDetection()
    retry_budget: RetryBudget = RetryBudget()
    client: ClientLimits = ClientLimits()
    upstream: UpstreamLimits = UpstreamLimits()
    drain: DrainSettings = DrainSettings()
    reload: ReloadSettings = ReloadSettings()
