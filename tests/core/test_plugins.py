"""The plugin registry: policies name filters, scorers and pickers; names and parameters are checked."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from quantroute.base import FrozenModel
from quantroute.config import PolicyConfig, ScorerRef, parse_config
from quantroute.core import plugins, scorers
from quantroute.core.filters import Filter, FilterContext
from quantroute.core.model import BackendState, Outcome, Rejection
from quantroute.core.scheduler import Policy, decide
from quantroute.core.scorers import Scorer
from quantroute.errors import ConfigError

from .helpers import backend, features, policy, snapshot


def config_error(policy: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({"policy": policy}, "gw.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("policy", "needles"),
    [
        (
            {"filters": ["context", "kv_celing"]},
            ["gw.yaml", "policy.filters.1.name", "unknown filter 'kv_celing'", "kv_ceiling"],
        ),
        (
            {"scorers": {"interactive": [{"name": "latencyy", "weight": 1}]}},
            ["policy.scorers.interactive.0.name", "unknown scorer 'latencyy'"],
        ),
        ({"picker": "fastest"}, ["policy.picker.name", "unknown picker 'fastest'", "round_robin"]),
        (
            {"filters": [{"name": "context", "parameters": {"slack": 3}}]},
            ["policy.filters.0.parameters.slack", "Extra inputs are not permitted", "got 3"],
        ),
        (
            {"scorers": {"batch": [{"name": "cost", "weight": 0}]}},
            ["policy.scorers.batch", "at least one scorer needs a positive weight"],
        ),
        (
            {"scorers": {"batch": [{"name": "cost", "weight": -1}]}},
            ["policy.scorers.batch.0.weight", "greater than or equal to 0", "got -1"],
        ),
        (
            {"weights": {"batch": {"cost": 1}}, "scorers": {}},
            ["give policy.scorers or its earlier form policy.weights, not both"],
        ),
    ],
)
def test_a_wrong_plugin_reference_names_the_field_and_the_value(
    policy: dict[str, Any], needles: list[str]
) -> None:
    message = config_error(policy)
    for needle in needles:
        assert needle in message, message


def test_the_earlier_weights_form_becomes_the_same_scorers() -> None:
    old = PolicyConfig.model_validate(
        {"weights": {"interactive": {"least_loaded": 1.0}, "batch": {"cost": 1.0}}}
    )
    assert old.weights is None
    assert old.scorers.interactive == (
        ScorerRef(name="headroom", weight=0.4),
        ScorerRef(name="latency", weight=0.4),
        ScorerRef(name="cost", weight=0.2),
        ScorerRef(name="least_loaded", weight=1.0),
    )
    assert [(s.name, s.weight) for s in old.scorers.batch] == [
        ("headroom", 0.4),
        ("latency", 0.4),
        ("cost", 1.0),
    ]
    assert "weights" not in old.model_dump()
    assert PolicyConfig().scorers == PolicyConfig.model_validate({"weights": {}}).scorers


def test_plain_names_and_references_are_the_same_policy() -> None:
    short = PolicyConfig.model_validate({"filters": ["context"], "picker": "round_robin"})
    long = PolicyConfig.model_validate(
        {"filters": [{"name": "context"}], "picker": {"name": "round_robin", "parameters": {}}}
    )
    assert short == long


class Slack(FrozenModel):
    max_waiting: int


def _waiting_cap(params: Slack) -> Filter:
    def waiting_cap(b: BackendState, _ctx: FilterContext) -> Rejection | None:
        waiting = (b.metrics.num_waiting if b.metrics else None) or 0
        if waiting <= params.max_waiting:
            return None
        return Rejection("waiting_cap", f"{waiting:.0f} waiting > {params.max_waiting}")

    return waiting_cap


class Prefer(FrozenModel):
    backend: str


def _prefer(params: Prefer) -> Scorer:
    def prefer(candidates: Sequence[BackendState], _ctx: FilterContext) -> list[float]:
        return [1.0 if b.id == params.backend else 0.0 for b in candidates]

    return prefer


@pytest.fixture
def registered() -> Iterator[None]:
    plugins.register_filter("waiting_cap", _waiting_cap, Slack)
    plugins.register_scorer("prefer", _prefer, Prefer)
    yield
    del plugins.FILTERS["waiting_cap"], plugins.SCORERS["prefer"]


@pytest.mark.usefixtures("registered")
def test_a_registered_plugin_runs_with_its_parameters() -> None:
    pol = policy(
        ("a", "b", "c"),
        filters=[{"name": "waiting_cap", "parameters": {"max_waiting": 2}}],
        scorers={
            "interactive": [
                {"name": "prefer", "weight": 5, "parameters": {"backend": "c"}},
                {"name": "least_loaded", "weight": 1},
            ]
        },
    )
    snap = snapshot(backend("a", waiting=3), backend("b"), backend("c", running=40))
    d = decide(features(), snap, None, pol)
    assert d.outcome is Outcome.ROUTED and d.chosen == "c"
    assert d.rejected == {"a": (Rejection("waiting_cap", "3 waiting > 2"),)}
    assert set(d.scores["c"].parts) == {"prefer", "least_loaded"}


@pytest.mark.usefixtures("registered")
def test_a_registered_plugins_parameters_are_validated() -> None:
    message = config_error({"filters": [{"name": "waiting_cap", "parameters": {}}]})
    assert "policy.filters.0.parameters.max_waiting: Field required" in message


def _one_at_a_time(
    backend: BackendState, candidates: Sequence[BackendState], _c: FilterContext
) -> float:
    """Rates one candidate against the others: 1.0 for the fewest running among them."""

    def running(b: BackendState) -> float:
        return (b.metrics.num_running if b.metrics else None) or 0.0

    return 1.0 if running(backend) == min(running(c) for c in candidates) else 0.0


def _miscounting(_params: plugins.NoParameters) -> Scorer:
    def short(candidates: Sequence[BackendState], _ctx: FilterContext) -> list[float]:
        return [1.0] * (len(candidates) - 1)

    return short


@pytest.fixture
def adapted() -> Iterator[None]:
    plugins.register_scorer("fewest_running", lambda _p: scorers.each(_one_at_a_time))
    plugins.register_scorer("miscounting", _miscounting)
    yield
    del plugins.SCORERS["fewest_running"], plugins.SCORERS["miscounting"]


@pytest.mark.usefixtures("adapted")
def test_a_scorer_written_one_candidate_at_a_time_rates_each_against_all() -> None:
    pol = policy(
        ("a", "b", "c"), scorers={"interactive": [{"name": "fewest_running", "weight": 1}]}
    )
    snap = snapshot(backend("a", running=5), backend("b", running=1), backend("c", running=9))
    d = decide(features(), snap, None, pol)
    assert d.chosen == "b"
    assert {k: v.parts["fewest_running"] for k, v in d.scores.items()} == {
        "a": 0.0,
        "b": 1.0,
        "c": 0.0,
    }


@pytest.mark.usefixtures("adapted")
def test_a_scorer_that_rates_too_few_candidates_is_named_in_the_error() -> None:
    pol = policy(("a", "b"), scorers={"interactive": [{"name": "miscounting", "weight": 1}]})
    snap = snapshot(backend("a"), backend("b"))
    with pytest.raises(ValueError, match="scorer 'miscounting' rated 1 of 2 candidates"):
        decide(features(), snap, None, pol)


def _estimating(_params: plugins.NoParameters) -> Filter:
    """A filter that works out the latency estimates of ``a`` and ``b`` and turns ``a`` away:
    the decision's memo then holds as many estimates as there are candidates, one of them for
    a backend that is not a candidate."""

    def estimating(b: BackendState, ctx: FilterContext) -> Rejection | None:
        if b.id in ("a", "b"):
            scorers.estimate(b, ctx)
        return Rejection("estimating", "not a") if b.id == "a" else None

    return estimating


@pytest.fixture
def estimating() -> Iterator[None]:
    plugins.register_filter("estimating", _estimating)
    yield
    del plugins.FILTERS["estimating"]


@pytest.mark.usefixtures("estimating")
@pytest.mark.parametrize("scorer", ["latency", "least_loaded"])
def test_the_decision_carries_the_estimates_of_its_candidates_alone(scorer: str) -> None:
    pol = policy(
        ("a", "b", "c"),
        filters=[{"name": "estimating"}],
        scorers={"interactive": [{"name": scorer, "weight": 1}]},
    )
    snap = snapshot(backend("a"), backend("b", running=3), backend("c"))
    d = decide(features(), snap, None, pol)
    assert list(d.latency) == ["b", "c"] and set(d.ranked) == {"b", "c"}
    busy, idle = d.latency["b"], d.latency["c"]
    assert busy.prior_queue_ms > idle.prior_queue_ms  # each its own backend's, not a neighbour's


def test_an_unknown_plugin_cannot_reach_decide() -> None:
    bad = PolicyConfig.model_validate({"filters": ["nope"]})  # model alone: names unchecked
    with pytest.raises(ConfigError, match="unknown filter 'nope'"):
        Policy(bad)
