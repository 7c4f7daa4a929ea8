"""The fused default filters and scorers decide exactly as the plugin chain does."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantroute.config import BackendConfig, GroupConfig, PolicyConfig
from quantroute.core import filters, fused, plugins
from quantroute.core.filters import FilterContext
from quantroute.core.latency import ObservedLatency
from quantroute.core.matrix import CapabilityMatrix, Percentiles, TaskProfile, VariantProfile
from quantroute.core.model import (
    SERVING,
    BackendMetrics,
    BackendState,
    Health,
    LatencyClass,
    PassiveState,
    RequestFeatures,
    Snapshot,
)
from quantroute.core.prefix import PrefixView
from quantroute.core.scheduler import Policy, decide

from .helpers import backend, features, matrix, policy

VARIANTS = ("small", "mid", "big")
TASKS = ("coding", "reasoning", "extraction", "chat")


def unfused(p: Policy) -> Policy:
    """The same policy, run through the plugin chain alone."""
    plain = Policy(p.config, p.groups)
    chain = dataclasses.replace(plain.plan, fused_filters=False, fused_scorers={})
    object.__setattr__(plain, "plan", chain)
    return plain


def fraction(low: float = 0.0, high: float = 1.2) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


@st.composite
def states(draw: st.DrawFn, index: int, calm: bool = False) -> BackendState:
    """A backend in any state; ``calm``: one every default filter admits, mostly."""
    variant = draw(st.sampled_from(VARIANTS))
    config = BackendConfig(
        id=f"b{index}",
        url=f"http://b{index}:8000",
        served_model_name=variant,
        variant=variant,
        max_seq_len=draw(st.sampled_from([2048, 8192, 32768])),
        capacity=draw(st.integers(1, 256)),
        gpu_cost_per_hour=draw(st.sampled_from([0.0, 1.0, 2.5])),
    )
    usage = fraction(0.0, 0.97) if calm else st.none() | fraction()
    metrics = draw(
        (st.nothing() if calm else st.none())
        | st.builds(
            BackendMetrics,
            kv_cache_usage=usage,
            num_running=st.none() | st.floats(0, 300),
            num_waiting=st.none() | st.floats(0, 50),
            num_gpu_blocks=st.sampled_from([None, 0, 500, 4000]),
            block_size=st.sampled_from([None, 16]),
        )
    )
    passive = (
        SERVING
        if calm
        else draw(
            st.sampled_from(
                [
                    SERVING,
                    SERVING,
                    SERVING,
                    PassiveState(ejected="5xx: three in a row"),
                    PassiveState(weight=0.4),
                    PassiveState(backpressure=True),
                    PassiveState(suspect=True),
                ]
            )
        )
    )
    observed = draw(
        st.none()
        | st.builds(
            ObservedLatency,
            per_token_s=st.none() | st.floats(0.001, 0.1),
            per_token_n=st.floats(0, 50),
        )
    )
    health = Health.FRESH if calm else draw(st.sampled_from([Health.FRESH, Health.STALE]))
    return BackendState(
        config,
        health,
        metrics,
        draw(st.integers(0, 40)),
        draw(st.integers(0, 8_000 if calm else 100_000)),
        draw(st.integers(0, 50_000)),
        passive,
        observed,
    )


@st.composite
def matrices(draw: st.DrawFn) -> CapabilityMatrix | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    profiles = {}
    for variant in sorted(draw(st.sets(st.sampled_from(VARIANTS)))):
        tasks = {
            task: TaskProfile(
                quality=draw(st.none() | fraction(0.0, 1.0)),
                stable=draw(st.sampled_from([True, True, False])),
            )
            for task in sorted(draw(st.sets(st.sampled_from(TASKS))))
        }
        profiles[variant] = VariantProfile(
            ttft_ms=Percentiles(p50=draw(st.none() | st.floats(5, 500))),
            itl_ms=Percentiles(p50=draw(st.none() | st.floats(1, 50))),
            cost_per_1m_output_tokens=draw(st.none() | st.floats(0, 5)),
            prefill_tokens_per_s=draw(st.none() | st.floats(500, 20_000)),
            tasks=tasks,
        )
    return CapabilityMatrix(schema_version=1, generated_at="2026-11-28", variants=profiles)


SCORER_SETS = [
    None,  # the defaults
    [{"name": "latency", "weight": 1.0}],
    [{"name": "cost", "weight": 2.0}, {"name": "headroom", "weight": 0.5}],
    [{"name": "headroom", "weight": 1.0}, {"name": "headroom", "weight": 1.0}],
]


def make_policy(
    threshold: float, fallback: str, decode: int, measured: bool, scorers: Any, floor: float
) -> tuple[Policy, Policy]:
    """A policy of group ``auto`` over every variant, and the same run through the chain."""
    section: dict[str, Any] = {
        "kv_pressure_threshold": threshold,
        "quality_fallback": fallback,
        "latency_decode_tokens": decode,
        "measured_latency": measured,
        "seed": decode + int(threshold * 100),
    }
    if scorers is not None:
        section["scorers"] = {"interactive": scorers, "batch": scorers}
    group = GroupConfig(name="auto", variants=VARIANTS, quality_floor=floor)
    chosen = Policy(PolicyConfig.model_validate(section), (group,))
    return chosen, unfused(chosen)


POLICIES = [
    make_policy(threshold, fallback, decode, measured, scorers, floor)
    for threshold, fallback, decode, measured, scorers, floor in itertools.product(
        [0.5, 0.85], ["reject", "best_available"], [0, 64], [True, False], SCORER_SETS, [0.0, 0.8]
    )
]
"""Built once: compiling a policy per generated case would be most of the test's time."""


@st.composite
def requests(draw: st.DrawFn, calm: bool = False) -> RequestFeatures:
    view = None
    if draw(st.booleans()):  # what the prefix index expects cached where (the prefill prior)
        ids = draw(st.sets(st.sampled_from([f"b{i}" for i in range(4)])))
        view = PrefixView({i: draw(fraction(0.0, 1.0)) for i in sorted(ids)}, {})
    return features(
        prompt=draw(st.integers(1, 1_000 if calm else 30_000)),
        max_tokens=draw(st.none() | st.integers(1, 1_000 if calm else 4_000)),
        task=draw(st.sampled_from(TASKS)),
        latency_class=draw(st.sampled_from(list(LatencyClass))),
        sequence=draw(st.integers(0, 10_000)),
        prefix=view,
    )


FLAWS: dict[str, dict[str, Any]] = {
    "stale metrics": {"health": Health.STALE},
    "ejected": {"passive": PassiveState(ejected="5xx: three in a row")},
    "ramping up": {"passive": PassiveState(weight=0.3)},
    "answered 429": {"passive": PassiveState(backpressure=True)},
    "failed a moment ago": {"passive": PassiveState(suspect=True)},
    "no metrics": {"metrics": None},
    "KV usage unknown": {"metrics": BackendMetrics(num_running=1.0)},
    "KV nearly full": {"metrics": BackendMetrics(kv_cache_usage=0.96)},
}
"""One thing wrong with one backend of an otherwise calm snapshot: what a filter turns away."""


@st.composite
def cases(draw: st.DrawFn) -> tuple[Snapshot, RequestFeatures, CapabilityMatrix | None]:
    """A snapshot of one to four backends, a request and a matrix. Most are calm (every
    backend fit to serve, as most of the time: the fused admit answers) or calm but for one
    flaw in one backend (a filter's single objection, the chain answers); the rest anything."""
    kind = draw(st.sampled_from(["calm", "flawed", "flawed", "any"]))
    calm = kind != "any"
    count = draw(st.integers(1, 4))
    backends = [draw(states(i, calm)) for i in range(count)]
    request = draw(requests(calm))
    table = draw(matrices())
    if kind == "flawed":
        flaw = draw(st.sampled_from([*FLAWS, "prompt too long", "quality below 0.8", "unstable"]))
        first = backends[0]
        if flaw in FLAWS:
            first = dataclasses.replace(first, **FLAWS[flaw])
        elif flaw == "prompt too long":
            config = first.config.model_copy(update={"max_seq_len": 1})
            first = dataclasses.replace(first, config=config)
        else:  # the matrix measured the first backend's variant poorly for this task
            task = TaskProfile(quality=0.5, stable=flaw != "unstable")
            profile = VariantProfile(tasks={request.task: task})
            variants = {} if table is None else dict(table.variants)
            variants[first.variant_id] = profile
            table = CapabilityMatrix(schema_version=1, generated_at="2026-11-28", variants=variants)
        backends[0] = first
    return Snapshot(taken_at=100.0, backends=tuple(backends)), request, table


@settings(max_examples=400, deadline=None, derandomize=True)
@given(case=cases(), chosen=st.sampled_from(POLICIES), downgrade=st.booleans())
def test_the_fused_decision_is_the_plugin_chains(
    case: tuple[Snapshot, RequestFeatures, CapabilityMatrix | None],
    chosen: tuple[Policy, Policy],
    downgrade: bool,
) -> None:
    (snap, request, table), (fast, chain) = case, chosen
    assert fast.plan.fused_filters and fast.plan.fused_scorers
    got = decide(request, snap, table, fast, downgrade=downgrade)
    assert got == decide(request, snap, table, chain, downgrade=downgrade)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    first=cases(),
    chosen=st.sampled_from(POLICIES),
    steps=st.lists(
        st.tuples(
            cases(),
            st.sampled_from(["new states", "same states", "another matrix", "another policy"]),
            st.sampled_from(POLICIES),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_terms_kept_from_one_decision_to_the_next_decide_as_the_chain(
    first: tuple[Snapshot, RequestFeatures, CapabilityMatrix | None],
    chosen: tuple[Policy, Policy],
    steps: list[tuple[tuple[Snapshot, RequestFeatures, CapabilityMatrix | None], str, Any]],
) -> None:
    """One cache of prepared terms through a run of decisions, as the router keeps it: the
    backends of the same ids in new states under the same matrix and policy, or the very same
    states under another matrix or policy. Each decision is the chain's (a term kept past its
    state, matrix or policy would not be)."""
    kept: dict[str, fused.Prepared] = {}
    snap, request, table = first
    (fast, chain) = chosen
    assert decide(request, snap, table, fast, prepared=kept) == decide(request, snap, table, chain)
    for (new_snap, request, new_table), change, other in steps:
        if change == "new states":
            snap = new_snap
        elif change == "another matrix":
            table = new_table
        elif change == "another policy":
            fast, chain = other
        got = decide(request, snap, table, fast, prepared=kept)
        assert got == decide(request, snap, table, chain)
    assert all(p.state.id == backend_id for backend_id, p in kept.items())


def test_the_same_states_under_another_policy_are_worked_out_again() -> None:
    """Measured latency switched off by a reload, on the very states the cache holds: the
    measured time per token no longer counts (a term kept past its policy would keep it)."""
    (on, _), (off, off_chain) = (
        next(p for p in POLICIES if p[0].config.measured_latency is measured)
        for measured in (True, False)
    )
    state = dataclasses.replace(
        backend("b0"), observed=ObservedLatency(per_token_s=0.01, per_token_n=5.0)
    )
    snap, request = Snapshot(1.0, (state,)), features(model="b0")
    kept: dict[str, fused.Prepared] = {}
    first = decide(request, snap, None, on, prepared=kept)
    assert first.latency["b0"].per_token_measured_ms == 10.0
    again = decide(request, snap, None, off, prepared=kept)
    assert again == decide(request, snap, None, off_chain)
    assert again.latency["b0"].per_token_measured_ms is None


def test_generated_cases_take_both_paths() -> None:
    """The property above reaches the fast admit and the chain (each answers some cases)."""
    seen = {True: 0, False: 0}

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(case=cases())
    def tally(case: tuple[Snapshot, RequestFeatures, CapabilityMatrix | None]) -> None:
        snap, request, table = case
        ctx = FilterContext(request, PolicyConfig(), table, 0.5)
        seen[fused.all_admitted(snap.backends, ctx)] += 1

    tally()
    assert seen[True] >= 20 and seen[False] >= 20, seen


def ctx_for(state: BackendState, floor: float = 0.5, **request: Any) -> FilterContext:
    table = matrix(
        steady={"quality": {"chat": 0.9}},
        weak={"quality": {"chat": 0.3}},
        shaky={"quality": {"chat": 0.9}, "stable": False},
    )
    return FilterContext(features(**request), PolicyConfig(), table, floor)


def with_variant(state: BackendState, variant: str) -> BackendState:
    config = state.config.model_copy(update={"variant": variant})
    return dataclasses.replace(state, config=config)


CASES = [
    ("admitted", backend("a"), {}, True),
    ("stale metrics", backend("a", health=Health.STALE), {}, False),
    ("ejected", dataclasses.replace(backend("a"), passive=PassiveState(ejected="x")), {}, False),
    ("ramping up", dataclasses.replace(backend("a"), passive=PassiveState(weight=1e-9)), {}, False),
    ("too long", backend("a", max_seq_len=150), {}, False),
    ("KV usage unknown", backend("a", kv=None), {}, False),
    ("KV at the ceiling", backend("a", kv=0.95), {}, False),
    ("KV pressure after this request", backend("a", kv=0.5, pending_kv=6000), {}, False),
    ("quality below the floor", with_variant(backend("a"), "weak"), {}, False),
    ("unstable for the task", with_variant(backend("a"), "shaky"), {}, False),
    ("measured and above the floor", with_variant(backend("a"), "steady"), {}, True),
    ("not measured for the task", with_variant(backend("a"), "weak"), {"task": "coding"}, True),
]


@pytest.mark.parametrize(
    ("why", "state", "request_kw", "admitted"), CASES, ids=[c[0] for c in CASES]
)
def test_the_fast_admit_agrees_with_each_filter(
    why: str, state: BackendState, request_kw: dict[str, Any], admitted: bool
) -> None:
    ctx = ctx_for(state, **request_kw)
    assert fused.all_admitted([state], ctx) is admitted
    verdicts = [f(state, ctx) for f in fused.FILTERS.values()]
    assert all(v is None for v in verdicts) is admitted


def test_a_plan_with_other_plugins_runs_the_chain() -> None:
    waiting = policy(VARIANTS, filters=["context", {"name": "waiting", "parameters": {"limit": 4}}])
    assert not waiting.plan.fused_filters
    load = policy(VARIANTS, scorers={"interactive": [{"name": "least_loaded", "weight": 1}]})
    assert LatencyClass.INTERACTIVE not in load.plan.fused_scorers
    assert LatencyClass.BATCH in load.plan.fused_scorers
    assert policy(VARIANTS).plan.fused_filters


def test_a_plugin_registered_over_a_builtin_name_is_not_fused() -> None:
    saved = plugins.FILTERS["context"]
    plugins.register_filter("context", lambda _p: filters.kv_ceiling)
    try:
        assert not policy(VARIANTS).plan.fused_filters
    finally:
        plugins.FILTERS["context"] = saved
    assert policy(VARIANTS).plan.fused_filters
