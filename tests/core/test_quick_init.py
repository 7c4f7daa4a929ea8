"""``quick_init`` gives a frozen, slotted dataclass a faster ``__init__`` that builds the very
same value: the same parameters, defaults, default factories and ``__post_init__``, still frozen."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from quantroute.base import quick_init
from quantroute.config import BackendConfig
from quantroute.core.model import BackendState, Decision, Health, Outcome, RequestFeatures


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: float | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: float | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Checked:
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low above high")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),
        ((1, "x"), {}),
        ((1,), {"c": [3]}),
        ((1, "x", [2], 0.5), {}),
        ((), {"a": 4, "d": 1.0}),
    ],
)
def test_the_same_value_as_dataclasses_own_init(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)  # type: ignore[arg-type]
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    assert quick == Quick(*args, **kwargs)  # type: ignore[arg-type]


def test_equal_and_hashable_as_before() -> None:
    assert Quick(1) != Quick(2)
    assert hash(Checked(1, 2)) == hash(Checked(1, 2)) != hash(Checked(1, 3))


def test_same_signature_and_a_fresh_default_list_each_time() -> None:
    assert list(inspect.signature(Quick).parameters) == list(inspect.signature(Plain).parameters)
    first, second = Quick(1), Quick(1)
    assert first.c == [] and first.c is not second.c
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick(1, "b", [], None, 5)  # type: ignore[call-arg]


def test_still_frozen_and_post_init_still_runs() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Quick(1).a = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="low above high"):
        Checked(3, 2)
    assert dataclasses.replace(Checked(1, 2), high=5) == Checked(1, 5)


def test_refuses_what_it_cannot_build_alike() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int = field(kw_only=True)

    @dataclass(frozen=True, slots=True)
    class DerivedWithoutDefault:
        a: int
        b: int = field(init=False)

    for cls in (Mutable, KeywordOnly, DerivedWithoutDefault):
        with pytest.raises(TypeError):
            quick_init(cls)


@dataclass(frozen=True, slots=True)
class PlainDerived:
    a: int
    double: int = field(init=False, default=-1)
    unset: int = field(init=False, default=7)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", 2 * self.a)


@quick_init
@dataclass(frozen=True, slots=True)
class QuickDerived:
    a: int
    double: int = field(init=False, default=-1)
    unset: int = field(init=False, default=7)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", 2 * self.a)


def test_a_field_left_out_of_init_takes_its_default_then_post_init_sets_it() -> None:
    quick, plain = QuickDerived(3), PlainDerived(3)
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain) == (3, 6, 7)
    assert list(inspect.signature(QuickDerived).parameters) == ["a"]
    assert dataclasses.replace(quick, a=5).double == 10  # worked out again, not copied


def test_a_backend_state_carries_its_config_id_and_variant_even_when_replaced() -> None:
    config = BackendConfig(
        id="b1", url="http://b1:8000", served_model_name="m", max_seq_len=8, capacity=1
    )
    state = BackendState(config, Health.FRESH)
    assert (state.id, state.variant_id) == ("b1", "b1")
    moved = dataclasses.replace(state, config=config.model_copy(update={"variant": "v"}))
    assert (moved.id, moved.variant_id) == ("b1", "v")
    assert "variant_id" not in repr(moved)


def test_the_routing_values_are_built_by_it() -> None:
    for cls in (BackendState, Decision, RequestFeatures):
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
        assert any(name.startswith("_set_") for name in cls.__init__.__code__.co_names)
    decision = Decision(Outcome.ROUTED, "a", ("a",), {}, {})
    assert decision.latency == {} and decision.relaxed == ()
