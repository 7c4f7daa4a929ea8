"""The body parse (orjson where it gives json's value, json otherwise) reads what json reads."""

from __future__ import annotations

import json

import pytest

from quantroute.errors import InvalidRequest
from quantroute.proxy.parse import load_body


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","messages":[{"role":"user","content":"hi \\u00e9"}]}',
        b'{"model":"m","seed":123456789012345678901234567890}',  # orjson: a float
        b'{"model":"m","temperature":NaN}',  # orjson refuses it
        b'{"model":"m","x":"\\ud800"}',  # a lone surrogate: orjson refuses it
        b'{"model":"a","model":"b"}',  # duplicate keys: the last wins
        '{"model":"m"}'.encode("utf-16"),  # json detects UTF-16
    ],
)
def test_the_body_is_what_json_reads(raw: bytes) -> None:
    body = load_body(raw)
    assert body == json.loads(raw)
    assert [type(v) for v in body.values()] == [type(v) for v in json.loads(raw).values()]


@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_deep_nesting_is_a_400_at_any_depth(depth: int) -> None:
    raw = b'{"model":"m","x":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(InvalidRequest, match="nest"):
        load_body(raw, max_depth=64)
