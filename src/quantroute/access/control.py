"""``AccessControl``: the one object the server asks who a request is and what it may do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from quantroute.access.config import AccessConfig, RequestCaps
from quantroute.access.errors import (
    InvalidApiKey,
    MissingApiKey,
    PermissionDenied,
    RevokedApiKey,
)
from quantroute.access.hygiene import caps_for, check_caps
from quantroute.access.keys import KeyStore, Principal
from quantroute.access.metrics import AccessMetrics
from quantroute.access.quotas import Admission, Quotas
from quantroute.access.upstream_auth import BackendCredentials
from quantroute.base import Clock
from quantroute.config import BackendConfig, GroupConfig, PolicyConfig
from quantroute.core.model import RequestFeatures


def may_use(
    principal: Principal,
    model: str,
    groups: Iterable[GroupConfig],
    backends: Iterable[BackendConfig],
) -> bool:
    """A key may use a model it names (or ``*``); naming a group also lets it name a served
    model, backend id or variant, as long as *every* backend that name reaches (the router picks
    among all of them, core/scheduler.candidates_for) belongs to one of its groups."""
    if principal.any_model or model in principal.models:
        return True
    allowed = {v for g in groups if g.name in principal.models for v in g.variants}
    reached = [b.variant_id for b in backends if model in (b.served_model_name, b.id, b.variant_id)]
    return bool(reached) and all(v in allowed for v in reached)


def groups_of(
    model: str, groups: Iterable[GroupConfig], backends: Iterable[BackendConfig]
) -> list[str]:
    """The group a request names, or the groups of the backend(s) it pins."""
    groups = list(groups)
    if any(g.name == model for g in groups):
        return [model]
    variants = {
        b.variant_id for b in backends if model in (b.served_model_name, b.id, b.variant_id)
    }
    return [g.name for g in groups if variants.intersection(g.variants)]


class AccessControl:
    def __init__(
        self,
        config: AccessConfig,
        registry: CollectorRegistry,
        *,
        lease_ttl_s: float,
        environ: Mapping[str, str] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.metrics = AccessMetrics(registry)
        self.keys = KeyStore(config, environ)
        self.quotas = Quotas(config.quotas, self.metrics, lease_ttl_s=lease_ttl_s, clock=clock)
        self.credentials = BackendCredentials(config.upstream_auth, environ)
        self._caps: dict[str, RequestCaps] = {c.group: c for c in config.request_caps}
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.keys.enabled

    async def start(self) -> None:
        await self.quotas.start()

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let pending settlements finish (bounded), then close the quota store."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=timeout_s)
        await self.quotas.aclose()

    # -- who -----------------------------------------------------------------------------------
    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        try:
            return self.keys.authenticate(headers)
        except RevokedApiKey:
            self.metrics.auth_failures.labels("revoked_key").inc()
            raise
        except InvalidApiKey:
            self.metrics.auth_failures.labels("invalid_key").inc()
            raise
        except MissingApiKey:
            self.metrics.auth_failures.labels("missing_key").inc()
            raise

    def require_admin(self, principal: Principal) -> None:
        if not principal.admin:
            self.metrics.auth_failures.labels("forbidden").inc()
            raise PermissionDenied(
                "This route needs an admin key.", code="insufficient_permissions"
            )

    def authorize_model(
        self,
        principal: Principal,
        model: str,
        groups: Iterable[GroupConfig],
        backends: Iterable[BackendConfig],
    ) -> None:
        if not may_use(principal, model, groups, backends):
            self.metrics.auth_failures.labels("forbidden").inc()
            raise PermissionDenied(
                f"This API key may not use the model '{model}'.",
                code="model_not_allowed",
                param="model",
            )

    def sees_decision(self, principal: Principal) -> bool:
        mode = self.config.decision_header
        return mode == "all" or (mode == "admin" and principal.admin)

    # -- what ----------------------------------------------------------------------------------
    def check_caps(
        self,
        model: str,
        body: Mapping[str, Any],
        groups: Iterable[GroupConfig],
        backends: Iterable[BackendConfig],
    ) -> None:
        """The caps of the group named, or of every group holding a pinned backend (so pinning
        never escapes a group's caps); ``*`` for the rest."""
        if not self._caps:
            return
        for group in groups_of(model, groups, backends) or ["*"]:
            caps = caps_for(self._caps, group)
            if caps is not None:
                check_caps(caps, body)

    def admission_tokens(self, features: RequestFeatures, policy: PolicyConfig) -> int:
        """Tokens to charge when a request is admitted (corrected when it ends)."""
        if not self.config.quotas.reserve_completion:
            return features.prompt_tokens
        return features.prompt_tokens + (features.max_tokens or policy.default_max_tokens)

    @staticmethod
    def counted(principal: Principal) -> bool:
        """Whether the key has a limit to count (:meth:`admit` returns None for one that has
        none: the request path skips it)."""
        return not principal.limits.unlimited

    async def admit(self, principal: Principal, tokens: int) -> Admission | None:
        return await self.quotas.admit(principal, tokens)

    async def finish(self, admission: Admission | None, used_tokens: int | None) -> None:
        await self.quotas.finish(admission, used_tokens)

    def settle(self, admission: Admission, used_tokens: int | None) -> None:
        """Settle an admission from synchronous code (a response's end): at once when it was
        counted in memory, else in the background (the client never waits on Redis)."""
        if self.quotas.finish_now(admission, used_tokens):
            return
        task = asyncio.get_running_loop().create_task(self.quotas.finish(admission, used_tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def status(self) -> dict[str, Any]:
        """For /admin: whether keys are on, the keys' names and rights, where quotas count."""
        return {
            "keys_enabled": self.enabled,
            "open": not self.enabled,
            "keys": self.keys.names(),
            "quota_store": "redis" if self.quotas.shared else "memory",
            "quota_store_degraded": self.quotas.degraded,
            "decision_header": self.config.decision_header,
            "metrics_port": self.config.metrics_port,
        }
