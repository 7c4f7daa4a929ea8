"""Passive health: the outlier-ejection state machine, pure and driven by an injected time.

The request path reports each attempt's :class:`~quantroute.resilience.outcomes.AttemptOutcome` and the
latencies it measured; routing reads :meth:`PassiveHealth.view`. Nothing here does I/O or reads a
clock: every method takes ``now``. The rules follow Envoy's outlier detection:

- ``consecutive_failures`` failures in a row eject a backend for ``base_ejection_s`` times its
  ejection count, capped at ``max_ejection_s``; the count falls by one for every
  ``base_ejection_s`` the backend then stays in service.
- An ejection never takes a group past ``max_ejection_share`` of its backends (at least one may
  go, never the last); a suppressed ejection is reported as such, and *held*: made as soon as
  the group has room (a backend went down, another ejection ended; :meth:`release_held`), not
  only at the backend's next failure, which may be long in coming when traffic comes in waves.
  Backends known to be down (their scrapes fail) count neither way, and a backend whose last
  failure was a refused connection is ejected regardless: neither serves anything.
- Back from an ejection a backend is on probation for ``slow_start_s``: its weight ramps from
  ``slow_start_min_weight`` to 1, and a single failure ejects it again.
- 429/503 mark backpressure for a moment (the answer's Retry-After, bounded); they never eject.
- Each failure makes a backend *suspect* for ``suspect_s``: routing prefers others meanwhile
  (soft), so a backend that fails fast (and so looks idle) does not draw a herd of first
  attempts while its failure streak builds up to an ejection.
- A backend whose moving-average TTFT or time per output token is ``latency_factor`` times its
  variant peers' median (and at least a floor slower) is ejected for ``latency_ejection_s`` -
  unless it was busier than they were (in-flight requests over ``latency_load_slack`` times
  theirs): a GPU is slower with more requests in its batch; that is load, not a fault.

The latency averages are the gateway's one measurement of its backends' speed: the same
:class:`~quantroute.core.latency.ObservedLatency` reaches the routing snapshot (``observed``),
where the latency scorer blends it with the matrix prior. It is kept whether or not outlier
ejection is on; an ejection starts it afresh.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from quantroute.core.latency import NOTHING, LatencySample, ObservedLatency, observe
from quantroute.resilience.outcomes import AttemptOutcome
from quantroute.resilience.settings import OutlierDetection

UNREACHABLE = frozenset(
    {AttemptOutcome.CONNECT_ERROR, AttemptOutcome.CONNECT_TIMEOUT, AttemptOutcome.RESET}
)
"""Failures a recovered scrape refutes (the process is back), ending their ejection early."""


class EjectionReason(StrEnum):
    CONSECUTIVE_FAILURES = "consecutive_failures"
    PROBATION_FAILURE = "probation_failure"
    LATENCY_OUTLIER = "latency_outlier"


@dataclass(frozen=True, slots=True)
class Ejection:
    """An ejection that happened (or was suppressed by the group share limit)."""

    backend_id: str
    reason: EjectionReason
    detail: str
    until: float
    count: int
    suppressed: bool = False


@dataclass(frozen=True, slots=True)
class HealthView:
    """One backend as routing sees it at ``now``."""

    ejected: bool = False
    reason: EjectionReason | None = None
    detail: str = ""
    ejected_for_s: float = 0.0
    """Seconds until the ejection ends (0 when not ejected)."""
    weight: float = 1.0
    """Slow-start weight in (0, 1]; 1 outside probation."""
    backpressure_for_s: float = 0.0
    suspect: bool = False
    """It failed within the last ``suspect_s``: prefer others."""
    consecutive_failures: int = 0
    ejections: int = 0
    ttft_s: float | None = None
    per_token_s: float | None = None

    @property
    def on_probation(self) -> bool:
        return not self.ejected and self.weight < 1.0

    @property
    def backpressure(self) -> bool:
        return self.backpressure_for_s > 0.0


HEALTHY = HealthView()


@dataclass(frozen=True, slots=True)
class _Held:
    """An ejection the group share suppressed, kept to be made when there is room."""

    reason: EjectionReason
    detail: str
    at: float
    """When it was (last) suppressed: evidence older than ``held_ejection_s`` is let go."""


@dataclass
class _Backend:
    variant: str
    consecutive: int = 0
    ejections: int = 0
    ejected_until: float | None = None
    reason: EjectionReason | None = None
    detail: str = ""
    probation_until: float | None = None
    slow_start_from: float | None = None
    backpressure_until: float | None = None
    suspect_until: float | None = None
    last_failure: AttemptOutcome | None = None
    failed_at: float | None = None
    """When its latest failure was recorded."""
    observed: ObservedLatency = NOTHING
    """Its latency samples, smoothed (with the requests in flight as they were taken)."""
    down: bool = False
    """Known down by other means (its scrapes fail): it holds no capacity either way."""
    unreachable: bool = False
    """Its current ejection came from refused or broken connections."""


class PassiveHealth:
    def __init__(
        self,
        settings: OutlierDetection,
        variants: Mapping[str, str] | None = None,
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.settings = settings
        self._backends: dict[str, _Backend] = {}
        self._groups: dict[str, frozenset[str]] = {}
        self._held: dict[str, _Held] = {}
        self.changed: set[str] = set()
        """Backends whose state may read differently since the routing snapshot last took this
        set (it clears it: its one reader). Time alone only ends what a state shows (ejection,
        probation, backpressure, suspicion): a backend that serves plainly stays so until an
        event names it here."""
        self.epoch = 0
        """Counts the changes that touch every backend (topology, settings)."""
        self.set_topology(variants or {}, groups or {})

    # -- topology ------------------------------------------------------------------------------
    def set_topology(
        self, variants: Mapping[str, str], groups: Mapping[str, Iterable[str]]
    ) -> None:
        """Backend id -> variant, group name -> backend ids. Known backends keep their state."""
        kept = {}
        for backend_id, variant in variants.items():
            old = self._backends.get(backend_id)
            kept[backend_id] = (
                old if old is not None and old.variant == variant else _Backend(variant)
            )
        self._backends = kept
        self._groups = {
            name: frozenset(b for b in members if b in kept) for name, members in groups.items()
        }
        self._held = {k: v for k, v in self._held.items() if k in kept}
        self.epoch += 1

    def configure(self, settings: OutlierDetection) -> None:
        self.settings = settings
        self.epoch += 1

    # -- events --------------------------------------------------------------------------------
    def record(
        self,
        backend_id: str,
        outcome: AttemptOutcome,
        now: float,
        retry_after_s: float | None = None,
        sent_at: float | None = None,
    ) -> Ejection | None:
        """``sent_at``: when the attempt was sent. A success of a request sent before the
        backend's latest failure says nothing about it since: a stream lasts minutes, and the
        streams a backend began before it broke would keep ending well and clearing the streak
        its new requests build (the soak: 190 to 254 failures before an ejection)."""
        b = self._backends.get(backend_id)
        if b is None or not self.settings.enabled:
            return None
        self.changed.add(backend_id)
        if outcome is AttemptOutcome.OK:
            stale = sent_at is not None and b.failed_at is not None and sent_at < b.failed_at
            if not stale:
                b.consecutive = 0
                self._held.pop(backend_id, None)  # it serves again: no ejection is owed
            return None
        if outcome is AttemptOutcome.BACKPRESSURE:
            self._backpressure(b, now, retry_after_s)
            return None
        if not outcome.is_failure:
            return None  # the client's doing: neither counts nor clears the streak
        if self._ejected(b, now):
            return None  # answers to requests sent before the ejection
        b.consecutive += 1
        b.last_failure = outcome
        b.failed_at = now
        b.suspect_until = now + self.settings.suspect_s
        if self._probation(b, now):
            return self._hold_if_suppressed(
                self._eject(backend_id, b, now, EjectionReason.PROBATION_FAILURE, outcome.value),
                now,
            )
        if b.consecutive >= self.settings.consecutive_failures:
            detail = f"{b.consecutive} consecutive failures, last {outcome.value}"
            unreachable = outcome is AttemptOutcome.CONNECT_ERROR
            return self._hold_if_suppressed(
                self._eject(
                    backend_id, b, now, EjectionReason.CONSECUTIVE_FAILURES, detail, unreachable
                ),
                now,
            )
        return None

    def record_latency(
        self,
        backend_id: str,
        now: float,
        *,
        ttft_s: float | None = None,
        per_token_s: float | None = None,
        load: float = 0.0,
        prior_queue_s: float | None = None,
        prior_prefill_s: float | None = None,
    ) -> Ejection | None:
        """A latency sample; ``load``: requests in flight at the backend as it was taken;
        ``prior_*``: what the latency prior expected for the request at dispatch (the fit of
        the measured factors). Kept even with outlier ejection off: routing reads it too."""
        b = self._backends.get(backend_id)
        s = self.settings
        if b is None or self._ejected(b, now):
            return None  # answers to requests sent before the ejection say nothing new
        sample = LatencySample(ttft_s, per_token_s, load, prior_queue_s, prior_prefill_s)
        b.observed = observe(b.observed, sample, s.latency_decay, now)
        if not s.enabled or not s.latency_outliers:
            return None
        o = b.observed
        for name, mine, samples, floor in (
            ("ttft", o.ttft_s, o.ttft_samples, s.latency_floor_s),
            ("time per token", o.per_token_s, o.per_token_samples, s.per_token_floor_s),
        ):
            if mine is None or samples < s.latency_min_samples:
                continue
            detail = self._latency_outlier(backend_id, b, name, mine, floor, now)
            if detail is not None:
                return self._hold_if_suppressed(
                    self._eject(backend_id, b, now, EjectionReason.LATENCY_OUTLIER, detail), now
                )
        return None

    def set_down(self, backend_id: str, down: bool, now: float | None = None) -> list[Ejection]:
        """Whether the backend is known down (e.g. its /metrics cannot be reached). A down
        backend counts neither for a group's size nor for its ejected share: ejecting a live
        backend while a dead one holds the group's ejection slot would leave it serving 5xx.
        With ``now``, the ejections held for want of room that its going down allows are made
        (returned)."""
        b = self._backends.get(backend_id)
        if b is None:
            return []
        b.down = down
        return self.release_held(now) if down and now is not None else []

    def recovered(self, backend_id: str, now: float) -> list[Ejection]:
        """The backend came back (its scrapes succeed again after it was down): ramp it up, do
        not flood it. An ejection for being unreachable (refused, reset) ends here, since the
        evidence it rested on is gone; it goes on probation as after any ejection, and the
        ejections held for want of room that this allows are made (returned)."""
        b = self._backends.get(backend_id)
        if b is None:
            return []
        self.changed.add(backend_id)
        if self._ejected(b, now):
            if not b.unreachable:
                return []
            b.ejected_until = now
        b.slow_start_from = now
        b.probation_until = now + self.settings.slow_start_s
        return self.release_held(now)

    def release_held(self, now: float) -> list[Ejection]:
        """Make the ejections the group share held back, where the group has room at ``now``
        (a backend went down, an ejection ended). Held evidence older than
        ``held_ejection_s`` is let go (the backend's next failure decides): a backend that
        failed in a burst and serves again would show it only as its streams end, which may
        take minutes, and must not be ejected on its old failures (the soak saw the one healthy
        backend ejected 23 s after a burst of connect timeouts). So is a hold on a backend that
        was ejected or succeeded since. Returns the ejections made."""
        made: list[Ejection] = []
        if not self._held:
            return made
        for backend_id, held in list(self._held.items()):
            b = self._backends.get(backend_id)
            if (
                b is None
                or not self.settings.enabled
                or now - held.at > self.settings.held_ejection_s
                or self._ejected(b, now)
            ):
                del self._held[backend_id]
                continue
            event = self._eject(backend_id, b, now, held.reason, held.detail)
            if not event.suppressed:
                del self._held[backend_id]
                made.append(event)
        return made

    @property
    def holding(self) -> bool:
        """Whether some ejection waits for room in its group."""
        return bool(self._held)

    # -- reading -------------------------------------------------------------------------------
    def view(self, backend_id: str, now: float) -> HealthView:
        b = self._backends.get(backend_id)
        if b is None or not self.settings.enabled:
            return HEALTHY
        ejected = self._ejected(b, now)
        return HealthView(
            ejected=ejected,
            reason=b.reason if ejected else None,
            detail=b.detail if ejected else "",
            ejected_for_s=(b.ejected_until or now) - now if ejected else 0.0,
            weight=0.0 if ejected else self._weight(b, now),
            backpressure_for_s=max(0.0, (b.backpressure_until or now) - now),
            suspect=b.consecutive > 0 and now < (b.suspect_until or now),
            consecutive_failures=b.consecutive,
            ejections=b.ejections,
            ttft_s=b.observed.ttft_s,
            per_token_s=b.observed.per_token_s,
        )

    def serving(self, backend_id: str, now: float) -> bool:
        """Whether :meth:`view` would show nothing routing acts on at ``now``: not ejected, not
        on probation, no backpressure, not suspect (the common case, answered without building
        a view: the routing snapshot asks per backend per request)."""
        b = self._backends.get(backend_id)
        if b is None or not self.settings.enabled:
            return True
        return not (
            (b.ejected_until is not None and now < b.ejected_until)
            or (b.probation_until is not None and now < b.probation_until)
            or (b.backpressure_until is not None and now < b.backpressure_until)
            or (b.consecutive > 0 and b.suspect_until is not None and now < b.suspect_until)
        )

    def observed(self, backend_id: str) -> ObservedLatency | None:
        """The backend's smoothed latency samples (None: unknown backend or nothing yet)."""
        b = self._backends.get(backend_id)
        return None if b is None or b.observed.samples == 0 else b.observed

    def views(self, now: float) -> dict[str, HealthView]:
        return {backend_id: self.view(backend_id, now) for backend_id in self._backends}

    # -- rules ---------------------------------------------------------------------------------
    @staticmethod
    def _ejected(b: _Backend, now: float) -> bool:
        return b.ejected_until is not None and now < b.ejected_until

    @staticmethod
    def _probation(b: _Backend, now: float) -> bool:
        return b.probation_until is not None and now < b.probation_until

    def _weight(self, b: _Backend, now: float) -> float:
        s = self.settings
        if not self._probation(b, now) or b.slow_start_from is None or s.slow_start_s <= 0:
            return 1.0
        ramp = (now - b.slow_start_from) / s.slow_start_s
        return min(1.0, s.slow_start_min_weight + (1.0 - s.slow_start_min_weight) * ramp)

    def _backpressure(self, b: _Backend, now: float, retry_after_s: float | None) -> None:
        s = self.settings
        wait = s.backpressure_s if retry_after_s is None else retry_after_s
        until = now + min(max(wait, 0.0), s.max_backpressure_s)
        b.backpressure_until = max(until, b.backpressure_until or until)

    def _room_to_eject(self, backend_id: str, now: float) -> bool:
        """Whether ejecting the backend keeps its groups within their ejection share. A backend
        known down takes no room: it serves nothing either way. A vLLM that is killed may have
        its scrapes fail before its streams break; it is still ejected, so the ejection is
        logged and counted, and a backend that keeps dying is ejected for longer each time."""
        if self._backends[backend_id].down:
            return True
        share = self.settings.max_ejection_share
        for members in self._groups.values():
            if backend_id not in members:
                continue
            alive = [self._backends[m] for m in members if not self._backends[m].down]
            size = len(alive)
            allowed = min(size - 1, max(1, int(share * size)))
            ejected = sum(1 for b in alive if self._ejected(b, now))
            if ejected + 1 > allowed:
                return False
        return True

    def _hold_if_suppressed(self, event: Ejection, now: float) -> Ejection:
        if event.suppressed:
            self._held[event.backend_id] = _Held(event.reason, event.detail, now)
        else:
            self._held.pop(event.backend_id, None)
        return event

    def _eject(
        self,
        backend_id: str,
        b: _Backend,
        now: float,
        reason: EjectionReason,
        detail: str,
        unreachable: bool = False,
    ) -> Ejection:
        """Eject, unless the group share forbids it. A backend that refuses connections is
        ejected regardless: it serves nothing either way, so its ejection costs no capacity."""
        s = self.settings
        count = self._decayed_count(b, now) + (reason is not EjectionReason.LATENCY_OUTLIER)
        if reason is EjectionReason.LATENCY_OUTLIER:
            duration = s.latency_ejection_s
        else:
            duration = min(s.base_ejection_s * max(count, 1), s.max_ejection_s)
        until = now + duration
        if not unreachable and not self._room_to_eject(backend_id, now):
            return Ejection(backend_id, reason, detail, until, count, suppressed=True)
        self.changed.add(backend_id)
        b.ejections, b.ejected_until, b.reason, b.detail = count, until, reason, detail
        b.unreachable = b.last_failure in UNREACHABLE
        b.consecutive = 0
        b.slow_start_from = until
        b.probation_until = until + s.slow_start_s
        b.observed = NOTHING
        return Ejection(backend_id, reason, detail, until, count)

    def _decayed_count(self, b: _Backend, now: float) -> int:
        """Envoy lowers the multiplier for every base interval a backend stays in service."""
        if b.ejected_until is None or b.ejections == 0:
            return b.ejections
        served = max(0.0, now - b.ejected_until)
        return max(0, b.ejections - int(served // self.settings.base_ejection_s))

    def _latency_outlier(
        self, backend_id: str, b: _Backend, name: str, mine: float, floor: float, now: float
    ) -> str | None:
        s = self.settings
        peers, loads = [], []
        for other_id, other in self._backends.items():
            if other_id == backend_id or other.variant != b.variant or self._ejected(other, now):
                continue
            o = other.observed
            value, samples = (
                (o.ttft_s, o.ttft_samples)
                if name == "ttft"
                else (o.per_token_s, o.per_token_samples)
            )
            if value is not None and samples >= s.latency_min_samples:
                peers.append(value)
                loads.append(o.load or 0.0)
        if not peers:
            return None
        median = statistics.median(peers)
        if mine <= s.latency_factor * median or mine - median <= floor:
            return None
        peer_load = statistics.median(loads)
        if (b.observed.load or 0.0) > s.latency_load_slack * peer_load + 1.0:
            return None  # slower because busier than its peers: routing evens that out
        return f"{name} {mine:.3f}s vs peers' median {median:.3f}s"
