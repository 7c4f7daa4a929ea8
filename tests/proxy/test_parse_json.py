"""The body parse (orjson where it gives json's value, json otherwise) reads what json reads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantroute.errors import InvalidRequest
from quantroute.proxy.parse import _LONG_INT, _may_hold_long_int, load_body


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","messages":[{"role":"user","content":"hi \\u00e9"}]}',
        b'{"model":"m","seed":123456789012345678901234567890}',  # orjson: a float
        b'{"model":"m","seed":98765432109876543210}',  # 20 digits, above 2**64
        b'{"model":"m","seed":-9223372036854775808}',  # 19 digits: orjson reads it
        b'{"model":"m","ids":[1,22,333,4444,55555,666666,7777777]}',  # 28 digits, no long run
        b'{"model":"m","n":1,"x":"00000000000000000000000","seed":184467440737095516160}',
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


_RUN = st.integers(0, 25).map(lambda n: (b"9876543210" * 3)[:n])  # digit runs, joined or apart
_OTHER = st.sampled_from([b"a", b",", b" ", b"\xe9", b'"x"'])


@given(st.lists(st.one_of(_RUN, _OTHER), max_size=12))
def test_the_digit_count_precheck_agrees_with_the_long_integer_search(parts: list[bytes]) -> None:
    """Counting digits first skips the regex for bodies that cannot hold a 20-digit run; it
    never hides one that does."""
    raw = b"".join(parts)
    assert _may_hold_long_int(raw) == (_LONG_INT.search(raw) is not None)
