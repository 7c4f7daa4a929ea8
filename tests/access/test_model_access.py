"""Which model names a key may use (access/control.may_use): a table."""

from __future__ import annotations

import pytest

from quantroute.access.config import QuotaLimits
from quantroute.access.control import groups_of, may_use
from quantroute.access.keys import Principal
from quantroute.config import BackendConfig, GroupConfig


def _backend(id_: str, name: str, variant: str) -> BackendConfig:
    return BackendConfig(
        id=id_, url="http://127.0.0.1:1", served_model_name=name, variant=variant,
        max_seq_len=8192, capacity=8,
    )  # fmt: skip


BACKENDS = [
    _backend("a1", "llama", "small"),
    _backend("a2", "llama", "small"),
    _backend("b1", "qwen", "long"),
    _backend("c1", "llama", "big"),  # the same served name in another group
    _backend("d1", "mistral", "cheap"),
]
GROUPS = [
    GroupConfig(name="auto", variants=("small", "long")),
    GroupConfig(name="premium", variants=("big",)),
    GroupConfig(name="everything", variants=("small", "long", "big", "cheap")),
]


def key(*models: str) -> Principal:
    return Principal("k", False, frozenset(models), QuotaLimits())


@pytest.mark.parametrize(
    ("models", "asked", "allowed"),
    [
        (("auto",), "auto", True),
        (("auto",), "premium", False),
        (("*",), "premium", True),
        (("auto",), "qwen", True),  # every qwen backend is in auto
        (("auto",), "long", True),  # a variant of auto
        (("auto",), "b1", True),  # a backend id in auto
        (("auto",), "llama", False),  # llama also reaches c1 (premium): the router could pick it
        (("auto", "premium"), "llama", True),
        (("auto",), "c1", False),
        (("auto",), "mistral", False),
        (("auto",), "nonexistent", False),
        (("llama",), "llama", True),  # named explicitly
    ],
)
def test_may_use(models: tuple[str, ...], asked: str, allowed: bool) -> None:
    assert may_use(key(*models), asked, GROUPS, BACKENDS) is allowed


@pytest.mark.parametrize(
    ("asked", "groups"),
    [
        ("auto", ["auto"]),
        ("qwen", ["auto", "everything"]),
        ("llama", ["auto", "premium", "everything"]),
        ("x", []),
    ],
)
def test_groups_of_for_caps(asked: str, groups: list[str]) -> None:
    assert groups_of(asked, GROUPS, BACKENDS) == groups
