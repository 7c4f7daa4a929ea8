"""The plugin registry: filters, scorers and pickers by name, each with typed parameters.

As in the Gateway API Inference Extension's endpoint picker, a policy names its plugins
(``policy.filters``, ``policy.scorers.{interactive,batch}``, ``policy.picker``) and each reference
is validated against this registry: the name must be registered and the ``parameters`` must fit
the plugin's own parameter model. :func:`compile_plan` turns a policy into a :class:`Plan` of
ready callables, once per policy, never per request.

Adding a plugin is one registration beside its code::

    class Params(FrozenModel):
        horizon_s: float = 5.0

    register_scorer("my_scorer", lambda p: partial(my_scorer, horizon_s=p.horizon_s), Params)

A scorer rates all of a decision's candidates in one call (``my_scorer(candidates, ctx, *,
horizon_s)`` returns one value per candidate, in order), as the Gateway API Inference
Extension's scorers do; :func:`quantroute.core.scorers.each` turns a function that rates one
candidate at a time into one.

A wrong name or parameter is a :class:`~quantroute.errors.ConfigError` naming the field
(``policy.scorers.interactive.2.parameters.horizon_s``) and the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from pydantic import Field, ValidationError

from quantroute.base import FrozenModel
from quantroute.config import PluginRef, PolicyConfig, ScorerRef
from quantroute.core import affinity, filters, fused, pickers, scorers
from quantroute.core.filters import Filter
from quantroute.core.model import LatencyClass
from quantroute.core.pickers import Picker
from quantroute.core.scorers import Scorer
from quantroute.errors import ConfigError

F = TypeVar("F")


class NoParameters(FrozenModel):
    """The parameters of a plugin that takes none (any key given is an error)."""


@dataclass(frozen=True, slots=True)
class Plugin(Generic[F]):
    name: str
    build: Callable[[Any], F]
    """Validated parameters -> the callable the scheduler runs."""
    parameters: type[FrozenModel] = NoParameters
    soft: bool = False
    """Filters only: relaxed when it alone would leave no candidate."""


FILTERS: dict[str, Plugin[Filter]] = {}
SCORERS: dict[str, Plugin[Scorer]] = {}
PICKERS: dict[str, Plugin[Picker]] = {}


def _constant(fn: F) -> Callable[[Any], F]:
    return lambda _params: fn


def register_filter(
    name: str,
    build: Callable[[Any], Filter],
    parameters: type[FrozenModel] = NoParameters,
    *,
    soft: bool = False,
) -> None:
    FILTERS[name] = Plugin(name, build, parameters, soft)


def register_scorer(
    name: str, build: Callable[[Any], Scorer], parameters: type[FrozenModel] = NoParameters
) -> None:
    SCORERS[name] = Plugin(name, build, parameters)


def register_picker(
    name: str, build: Callable[[Any], Picker], parameters: type[FrozenModel] = NoParameters
) -> None:
    PICKERS[name] = Plugin(name, build, parameters)


for _name, _filter in filters.REGISTRY.items():
    register_filter(_name, _constant(_filter), soft=_name in filters.SOFT_FILTERS)
for _name, _scorer in scorers.REGISTRY.items():
    register_scorer(_name, _constant(_scorer))
for _name, _picker in pickers.REGISTRY.items():
    register_picker(_name, _constant(_picker))


class WaitingParams(FrozenModel):
    limit: int = Field(ge=1)
    """Requests in vLLM's waiting queue at which a backend counts as saturated."""


register_filter("waiting", lambda p: partial(filters.waiting, limit=p.limit), WaitingParams)
register_scorer("prefix", affinity.build_prefix, affinity.AffinityParams)
register_scorer("session", affinity.build_session, affinity.AffinityParams)
register_scorer("cache_aware", affinity.build_cache_aware, affinity.CacheAwareParams)


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    name: str
    weight: float
    score: Scorer


@dataclass(frozen=True, slots=True)
class Plan:
    """A policy's plugins, built: what ``decide`` runs."""

    hard: tuple[tuple[str, Filter], ...]
    soft: tuple[tuple[str, Filter], ...]
    scorers: Mapping[LatencyClass, tuple[WeightedScorer, ...]]
    picker: Picker
    pooling: tuple[WeightedScorer, ...] = ()
    """The scorers of embeddings, score and rerank requests (load alone by default)."""
    outage_hard: tuple[tuple[str, Filter], ...] = ()
    """In a metrics outage failing open: the filters that need no live metrics..."""
    outage_soft: tuple[tuple[str, Filter], ...] = ()
    even_spread: tuple[WeightedScorer, ...] = ()
    """...and the gateway's own account alone (least loaded)."""
    fused_filters: bool = False
    """``hard`` and ``soft`` hold only the filters :func:`~quantroute.core.fused.all_admitted`
    knows: ``decide`` may admit every candidate in one pass."""
    fused_scorers: Mapping[LatencyClass, tuple[tuple[str, float], ...]] = field(
        default_factory=dict
    )
    """Per latency class whose profile holds only built-in scorers, its (name, weight) pairs:
    ``decide`` rates with :func:`~quantroute.core.fused.fused_scores` instead."""

    @property
    def tracks_prefix(self) -> bool:
        """A scorer reads the prefix index: the gateway must keep it and look requests up."""
        return any(
            s.name in affinity.PREFIX_SCORERS for profile in self.scorers.values() for s in profile
        )


def _build(registry: Mapping[str, Plugin[F]], kind: str, ref: PluginRef, where: str) -> F:
    plugin = registry.get(ref.name)
    if plugin is None:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"{where}.name: unknown {kind} {ref.name!r} (known: {known})")
    try:
        params = plugin.parameters.model_validate(ref.parameters)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        got = first.get("input")
        raise ConfigError(
            f"{where}.parameters.{field}: {first['msg']} (got {got!r}) for {kind} {ref.name!r}"
        ) from None
    return plugin.build(params)


def _scorers(refs: Sequence[ScorerRef], where: str) -> tuple[WeightedScorer, ...]:
    built = tuple(
        WeightedScorer(ref.name, ref.weight, _build(SCORERS, "scorer", ref, f"{where}.{i}"))
        for i, ref in enumerate(refs)
        if ref.weight > 0
    )
    if not built:
        raise ConfigError(f"{where}: at least one scorer needs a positive weight")
    return built


def compile_plan(policy: PolicyConfig) -> Plan:
    """Look every plugin of ``policy`` up and build it; ConfigError names the offending field."""
    # Passive health runs always: ejected backends are out; backpressure and slow start are
    # soft (relaxed when they alone would leave no candidate).
    hard: list[tuple[str, Filter]] = [("health", filters.health), ("ejection", filters.ejection)]
    soft: list[tuple[str, Filter]] = []
    for i, ref in enumerate(policy.filters):
        built = _build(FILTERS, "filter", ref, f"policy.filters.{i}")
        (soft if FILTERS[ref.name].soft else hard).append((ref.name, built))
    soft += [
        ("backpressure", filters.backpressure),
        ("recent_failure", filters.recent_failure),
        ("slow_start", filters.slow_start),
    ]
    profiles = {
        LatencyClass.INTERACTIVE: _scorers(
            policy.scorers.interactive, "policy.scorers.interactive"
        ),
        LatencyClass.BATCH: _scorers(policy.scorers.batch, "policy.scorers.batch"),
    }
    picker = _build(PICKERS, "picker", policy.picker, "policy.picker")
    pooling = _scorers(policy.scorers.pooling, "policy.scorers.pooling")
    live = filters.NEED_METRICS
    return Plan(
        tuple(hard),
        tuple(soft),
        profiles,
        picker,
        pooling,
        outage_hard=tuple((n, f) for n, f in hard if n not in live),
        outage_soft=tuple((n, f) for n, f in soft if n not in live),
        even_spread=(WeightedScorer("least_loaded", 1.0, scorers.least_loaded),),
        fused_filters=fused.fusable_filters(hard + soft),
        fused_scorers={
            latency_class: tuple((s.name, s.weight) for s in profile)
            for latency_class, profile in profiles.items()
            if fused.fusable_scorers([(s.name, s.score) for s in profile])
        },
    )
