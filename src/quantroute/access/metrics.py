"""Prometheus series of access control, on the gateway's registry. Labels carry key *names*."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class AccessMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.auth_failures = Counter(
            "quantroute_auth_failures",
            "Requests refused by authentication or authorization, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "quantroute_rate_limited",
            "Requests answered 429, by key name and the limit that was reached.",
            ["key", "limit"],
            registry=registry,
        )
        self.key_requests = Counter(
            "quantroute_key_requests",
            "Requests admitted, by key name.",
            ["key"],
            registry=registry,
        )
        self.key_tokens = Counter(
            "quantroute_key_tokens",
            "Tokens charged to a key (prompt + completion from the usage; the estimate without).",
            ["key"],
            registry=registry,
        )
        self.store_errors = Counter(
            "quantroute_quota_store_errors",
            "Failed or timed-out calls to the shared quota store (Redis).",
            registry=registry,
        )
        self.degraded = Gauge(
            "quantroute_quota_degraded",
            "1 while quotas are counted per replica (or refused) because Redis is unreachable.",
            registry=registry,
        )
        self._per_key: dict[str, tuple[Any, Any]] = {}
        for reason in ("missing_key", "invalid_key", "revoked_key", "forbidden"):
            self.auth_failures.labels(reason)
        self.store_errors.inc(0)

    def of_key(self, name: str) -> tuple[Any, Any]:
        """(requests, tokens) counters of a key, looked up once (``labels`` is not free)."""
        found = self._per_key.get(name)
        if found is None:
            found = self._per_key[name] = (
                self.key_requests.labels(name),
                self.key_tokens.labels(name),
            )
        return found
