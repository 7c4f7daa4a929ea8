"""The decision step: the pure core's ``decide`` over a fresh snapshot, plus its telemetry.

:meth:`Router.decide` is the one way a request gets a decision, for real traffic and for
``POST /v1/route/explain`` alike; ``dry_run=True`` (explain) records nothing: no metric, no
admin statistic, no request number used up. :meth:`Router.route` turns a decision that routes
nowhere into the error the client gets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from quantroute.config import GatewayConfig
from quantroute.core.fused import Prepared, prepared
from quantroute.core.model import Decision, Outcome, RequestFeatures, Snapshot
from quantroute.core.scheduler import Policy, decide
from quantroute.decisionlog import DecisionLog
from quantroute.errors import ContextLengthExceeded, ModelNotFound, NoBackendAvailable
from quantroute.state.matrix_source import MatrixSource
from quantroute.state.store import StateStore
from quantroute.telemetry import Telemetry

if TYPE_CHECKING:
    from quantroute.proxy.context import RequestContext

log = logging.getLogger("quantroute.decisions")
PROMPT_PARAM = {"completions": "prompt", "responses": "input", "embeddings": "input",
                "score": "text_1", "rerank": "documents"}  # fmt: skip
"""The parameter that holds the prompt, per API (chat and messages: ``messages``)."""


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore,
        matrix: MatrixSource,
        telemetry: Telemetry,
    ) -> None:
        self.config = config
        self.store = store
        self.matrix = matrix
        self.telemetry = telemetry
        self.policy = Policy(config.policy, config.groups)
        self._sequence = 0
        self._prepared: dict[str, Prepared] = {}
        """Each backend state's request-independent scoring terms, kept for the next decision."""
        log_config = config.decision_log
        self.decision_log = (
            None if log_config is None else DecisionLog(log_config, store.inflight.now)
        )

    def next_sequence(self, *, dry_run: bool = False) -> int:
        """The request number (round robin, tie-break seeding); a dry run does not use one up."""
        number = self._sequence
        if not dry_run:
            self._sequence += 1
        return number

    def continue_from(self, sequence: int) -> None:
        """Carry the request numbering over from the router this one replaces (a reload)."""
        self._sequence = sequence

    def decide(
        self,
        features: RequestFeatures,
        *,
        dry_run: bool = False,
        snapshot: Snapshot | None = None,
        downgrade: bool = False,
        later: Callable[..., object] | None = None,
    ) -> Decision:
        """The decision on ``snapshot`` (default: the store's, now); ``downgrade`` sets the
        quality floor aside (flow control, for a saturated group that allows it). ``later(fn,
        *args)`` takes the decision's telemetry off the request's path (the gateway's is
        :func:`~quantroute.proxy.upstream.after_upstream_send`: recorded once the upstream request
        is out, while it waits for its backend); without it the telemetry is recorded here."""
        started = time.perf_counter()
        snapshot = self.store.snapshot() if snapshot is None else snapshot
        matrix, policy = self.matrix.current, self.policy
        decision = decide(
            features, snapshot, matrix, policy, downgrade=downgrade, prepared=self._prepared
        )
        if not dry_run:
            elapsed = time.perf_counter() - started
            if later is None:
                self._record(features, decision, elapsed)
            else:
                later(self._record, features, decision, elapsed)
        return decision

    def route(self, features: RequestFeatures) -> Decision:
        """A decision that names a backend, or the error the client is answered with."""
        return self.routed(self.decide(features), features)

    def routed(self, decision: Decision, features: RequestFeatures) -> Decision:
        """``decision`` if it names a backend, else the error the client is answered with."""
        if decision.outcome is Outcome.ROUTED:
            return decision
        if self.decision_log is not None and decision.outcome in (
            Outcome.TOO_LONG,
            Outcome.NO_BACKEND,
        ):
            self.decision_log.refused(features, decision)
        if decision.outcome is Outcome.UNKNOWN_MODEL:
            raise ModelNotFound(
                f"The model '{features.model}' does not exist: not a group and no backend serves it.",
                param="model",
            )
        if decision.outcome is Outcome.UNSUPPORTED_API:
            raise ModelNotFound(
                f"The model '{features.model}' has no backend that serves the {features.api} API.",
                param="model",
            )
        if decision.outcome is Outcome.TOO_LONG:
            raise ContextLengthExceeded(
                f"This request needs about {features.prompt_tokens} prompt tokens plus "
                f"max_tokens={features.max_tokens}, more than any backend of "
                f"'{features.model}' accepts.",
                param=PROMPT_PARAM.get(features.api, "messages"),
            )
        group = decision.group or features.model
        self.telemetry.no_backend.labels(group).inc()
        self.telemetry.requests.inc(("none", group, "503"))
        raise NoBackendAvailable(
            f"No backend can take this request now for '{features.model}'.",
            reasons={k: tuple(map(str, v)) for k, v in decision.rejected.items()},
            retry_after_s=self.config.policy.retry_after_s,
        )

    def settled(self, ctx: RequestContext) -> None:
        """A request is over (its answer sent, its backend's lease released and its outcome
        recorded): its decision-log record (when the log is on). When it was the last one in
        flight, the routing snapshot is brought up to date now, while the gateway is idle, so
        that the next request's decision finds its backends' states built
        (:meth:`StateStore.snapshot` keeps them), with their request-independent scoring terms
        (:func:`~quantroute.core.fused.prepared`). Under load nothing is built here: the next
        request's snapshot builds what changed, once for every request that changed it."""
        if self.decision_log is not None:
            self.decision_log.settled(ctx)
        if self.store.inflight.idle():
            snapshot = self.store.snapshot()
            policy = self.policy
            if policy.plan.fused_scorers:  # else no decision reads the terms
                matrix, kept = self.matrix.current, self._prepared
                for backend in snapshot.backends:  # the very policy object decide passes on
                    prepared(backend, matrix, policy.config, kept)

    def _record(self, features: RequestFeatures, decision: Decision, elapsed_s: float) -> None:
        t = self.telemetry
        t.route_duration.observe((decision.chosen or "none",), elapsed_s)
        for backend_id, rejections in decision.rejected.items():
            for rejection in rejections:
                t.rejections.labels(backend_id, rejection.filter).inc()
                self.store.note_steered_away(backend_id, rejection.filter)
        for backend_id in decision.kv_pressure:
            t.cache_pressure.labels(backend_id).inc()
        view = features.prefix
        if view is not None:
            for backend_id, scores in decision.scores.items():
                if scores.parts.get("prefix") == 0.0 and view.share(backend_id) > 0.0:
                    t.prefix_withdrawn.labels(backend_id).inc()
        if log.isEnabledFor(logging.DEBUG) or self.config.log_decisions:
            log.info("decision task=%s %s", features.task, decision.explain())
