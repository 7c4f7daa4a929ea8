"""Hostile chat/completions bodies from hypothesis against the real gateway: deep nesting, huge
strings, wrong types, unicode edge cases (lone surrogates, NUL, RTL, combining marks), duplicate
keys, invalid UTF-8, extreme numbers. Never a 5xx; every 4xx in OpenAI's format with the
response's request id. ``QUANTROUTE_FUZZ_EXAMPLES`` scales it (``scripts/fuzz``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .st_checks import openai_error_problems
from .target import KEY, fuzz_target

EXAMPLES = int(os.environ.get("QUANTROUTE_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases every run; scripts/fuzz varies the seed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if os.environ.get("QUANTROUTE_FUZZ_SEED"):
    FUZZ = settings(FUZZ, derandomize=False)

EDGE_TEXT = st.sampled_from(
    [
        "",
        "\x00",
        "\ud800",  # a lone surrogate (valid in JSON text as an escape, not in UTF-8)
        "\udfff\ud800",
        "\u202e\u202dreversed",
        "e\u0301\u0301\u0301",
        "\ufeffbom",
        "🧪" * 50,
        "\uffff\U0010ffff",
        "def f():\n    return 1\n```",
        "x" * 70_000,
    ]
)
TEXT = st.one_of(st.text(max_size=200), EDGE_TEXT)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, 1.5, -0.0, 1e308]),
    st.floats(allow_nan=False, allow_infinity=False),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUE = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _field(good: st.SearchStrategy[Any], wild: bool) -> st.SearchStrategy[Any]:
    """In the wild tier anything may stand in any field; in the plausible tier the fields have
    the right types and the hostility is in their values (strings, sizes, unicode)."""
    return st.one_of(good, good, JSON_VALUE) if wild else good


def _bodies(wild: bool) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    def f(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return _field(good, wild)

    message = st.fixed_dictionaries(
        {"role": f(st.sampled_from(["user", "system", "assistant", "tool"]))},
        optional={
            "content": f(
                st.one_of(
                    TEXT,
                    st.none(),
                    st.lists(
                        st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=3
                    ),
                )
            ),
            "name": TEXT,
        },
    )
    common = {
        "max_tokens": f(st.integers(min_value=1, max_value=80)),
        "max_completion_tokens": f(st.integers(min_value=1, max_value=80)),
        "stream": f(st.booleans()),
        "stream_options": f(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "n": f(st.integers(min_value=1, max_value=5)),
        "temperature": f(st.floats(min_value=0, max_value=2)),
        "response_format": f(
            st.fixed_dictionaries({"type": st.sampled_from(["json_object", "text"])})
        ),
        "x-extra": JSON_VALUE,
    }
    model = f(st.sampled_from(["auto", "auto", "model-a", "model-b", "nope"]))
    chat = st.fixed_dictionaries(
        {"model": model, "messages": f(st.lists(message, min_size=1, max_size=70))},
        optional=common,
    )
    prompt = st.one_of(
        TEXT,
        st.lists(TEXT, min_size=1, max_size=3),
        st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=50),
        st.lists(
            st.lists(st.integers(min_value=0, max_value=50_000), max_size=5), min_size=1, max_size=3
        ),
    )
    completion = st.fixed_dictionaries({"model": model, "prompt": f(prompt)}, optional=common)
    return chat, completion


PLAUSIBLE_CHAT, PLAUSIBLE_COMPLETION = _bodies(wild=False)
WILD_CHAT, WILD_COMPLETION = _bodies(wild=True)
CHAT = st.one_of(PLAUSIBLE_CHAT, WILD_CHAT)
COMPLETION = st.one_of(PLAUSIBLE_COMPLETION, WILD_COMPLETION)


@st.composite
def hostile_raw(draw: st.DrawFn) -> bytes:
    """Bodies no JSON encoder produces: nesting, duplicates, bad bytes, non-standard numbers."""
    kind = draw(st.sampled_from(["deep", "duplicate", "bytes", "numbers", "truncated", "top"]))
    if kind == "deep":
        depth = draw(st.integers(min_value=100, max_value=200_000))
        inner = "[" * depth + "]" * depth
        return (
            '{"model": "auto", "messages": [{"role": "user", "content": ' + inner + "}]}"
        ).encode()
    if kind == "duplicate":
        first, second = draw(st.sampled_from([('"auto"', "5"), ("4", '"9"'), ("1", "100000000")]))
        key = draw(st.sampled_from(["model", "max_tokens", "n", "stream", "messages"]))
        base = '{"model": "auto", "messages": [{"role": "user", "content": "hi"}]'
        return f'{base}, "{key}": {first}, "{key}": {second}}}'.encode()
    if kind == "bytes":
        junk = draw(st.binary(min_size=1, max_size=64))
        return b'{"model": "auto", "messages": [{"role": "user", "content": "' + junk + b'"}]}'
    if kind == "numbers":
        number = draw(
            st.sampled_from(["NaN", "Infinity", "-Infinity", "1e99999", "9" * 5000, "-0", "1E-400"])
        )
        field = draw(st.sampled_from(["max_tokens", "n", "temperature", "top_p"]))
        return f'{{"model": "auto", "messages": [{{"role": "user", "content": "hi"}}], "{field}": {number}}}'.encode()
    if kind == "truncated":
        body = json.dumps(
            {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        return body[: draw(st.integers(min_value=0, max_value=len(body) - 1))]
    return draw(
        st.sampled_from([b"[]", b"null", b'"auto"', b"123", b"{}", b"\xef\xbb\xbf{}", b" "])
    )


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with (
        fuzz_target() as target,
        httpx.Client(
            base_url=target.url,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=30,
        ) as http,
    ):
        yield http


def check(http: httpx.Client, path: str, payload: bytes) -> None:
    response = http.post(path, content=payload)
    assert response.status_code < 500, (response.status_code, response.text[:500], payload[:300])
    if response.status_code >= 400:
        body = response.json()
        assert openai_error_problems(response.status_code, body) == [], payload[:300]
        assert body["error"].get("request_id") == response.headers["x-request-id"]


def _encode(body: dict[str, Any]) -> bytes:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a hostile client can send them
    return json.dumps(body, ensure_ascii=True, allow_nan=False).encode()


@FUZZ
@given(body=CHAT)
def test_hostile_chat_bodies(client: httpx.Client, body: dict[str, Any]) -> None:
    check(client, "/v1/chat/completions", _encode(body))


@FUZZ
@given(body=COMPLETION)
def test_hostile_completion_bodies(client: httpx.Client, body: dict[str, Any]) -> None:
    check(client, "/v1/completions", _encode(body))


@FUZZ
@given(
    payload=hostile_raw(),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/route/explain"]),
)
def test_hostile_raw_bodies(client: httpx.Client, payload: bytes, path: str) -> None:
    check(client, path, payload)
