"""Routing features from Responses, Messages and pooling bodies: tables of bodies and results."""

from __future__ import annotations

from typing import Any

import pytest

from quantroute.apis import extract
from quantroute.core.features import PER_MESSAGE_TOKENS, PRIMING_TOKENS, classify_task
from quantroute.errors import InvalidRequest


def _texts(extracted: extract.Extracted) -> list[tuple[object, object]]:
    return [(m["role"], m["content"]) for m in extracted.messages]


RESPONSES_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("text input", {"input": "hi"}, [("user", "hi")]),
    (
        "instructions become the system message",
        {"instructions": "Be brief.", "input": "hi"},
        [("system", "Be brief."), ("user", "hi")],
    ),
    (
        "message items with string content",
        {"input": [{"role": "developer", "content": "JSON only."}, {"role": "user", "content": "x"}]},
        [("developer", "JSON only."), ("user", "x")],
    ),
    (
        "content parts: text of each, images count nothing",
        {"input": [{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:..."},
            {"type": "input_text", "text": "here"},
        ]}]},
        [("user", "look\nhere")],
    ),
    (
        "assistant output parts and refusals",
        {"input": [{"role": "assistant", "content": [
            {"type": "output_text", "text": "ok", "annotations": []},
            {"type": "refusal", "refusal": "no"},
        ]}]},
        [("assistant", "ok\nno")],
    ),
    (
        "tool calls and their outputs",
        {"input": [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ]},
        [("assistant", '{"a": 1}'), ("tool", "42")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in RESPONSES_CASES], ids=[c[0] for c in RESPONSES_CASES]
)
def test_responses_messages(body: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert _texts(extract.responses({"model": "auto", **body})) == expected


def test_responses_history_comes_before_the_new_input_and_counts() -> None:
    history = [{"role": "user", "content": "a" * 400}, {"role": "assistant", "content": "b" * 400}]
    body = {"model": "auto", "instructions": "sys", "input": "next"}
    alone = extract.responses(body)
    whole = extract.responses(body, history)
    assert _texts(whole) == [("system", "sys"), ("user", "a" * 400), ("assistant", "b" * 400),
                             ("user", "next")]  # fmt: skip
    assert whole.prompt_tokens(4) - alone.prompt_tokens(4) == 200 + 2 * PER_MESSAGE_TOKENS


def test_responses_output_limit_stream_and_json_format() -> None:
    got = extract.responses(
        {"model": "m", "input": "x", "max_output_tokens": 64, "stream": True,
         "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}}
    )  # fmt: skip
    assert (got.model, got.max_tokens, got.stream, got.wants_json) == ("m", 64, True, True)


def test_developer_text_feeds_the_task_heuristic() -> None:
    got = extract.responses(
        {"model": "m", "input": [{"role": "developer", "content": "Extract the JSON fields."},
                                 {"role": "user", "content": "Ada, 36"}]}
    )  # fmt: skip
    assert classify_task(got.task_text()) == "extraction"


BAD_RESPONSES: list[tuple[dict[str, Any], str]] = [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": ["text"]}, "input[0]"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ({"model": "m", "input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
    ({"model": "m", "input": "x", "instructions": ["a"]}, "instructions"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
]


@pytest.mark.parametrize(("body", "param"), BAD_RESPONSES)
def test_bad_responses_bodies_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        extract.responses(body)
    assert caught.value.param == param


MESSAGES_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("text", {"messages": [{"role": "user", "content": "hi"}]}, [("user", "hi")]),
    (
        "system text and blocks",
        {"system": [{"type": "text", "text": "Be brief."}],
         "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        [("system", "Be brief."), ("user", "hi")],
    ),
    (
        "tool use and tool results",
        {"messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                               "input": {"q": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": [{"type": "text", "text": "42"}]}]},
        ]},
        [("assistant", '{"q": 1}'), ("user", "42")],
    ),
    (
        "images count no text",
        {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "data": "..."}},
            {"type": "text", "text": "what is this"},
        ]}]},
        [("user", "what is this")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in MESSAGES_CASES], ids=[c[0] for c in MESSAGES_CASES]
)
def test_anthropic_messages(body: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    got = extract.anthropic_messages({"model": "m", "max_tokens": 10, **body})
    assert _texts(got) == expected
    assert got.max_tokens == 10


BAD_MESSAGES: list[tuple[dict[str, Any], str]] = [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 5}, "messages"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0]"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
    ({"max_tokens": 5, "system": 3, "messages": [{"role": "user", "content": "x"}]}, "system"),
]


@pytest.mark.parametrize(("body", "param"), BAD_MESSAGES)
def test_bad_messages_bodies_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        extract.anthropic_messages({"model": "m", **body})
    assert caught.value.param == param


POOLING_CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("embeddings", {"input": "abcdefgh"}, (2,)),
    ("embeddings", {"input": ["abcd", "abcdefgh"]}, (1, 2)),
    ("embeddings", {"input": [1, 2, 3]}, (3,)),
    ("embeddings", {"input": [[1, 2], [3]]}, (2, 1)),
    ("rerank", {"query": "abcd", "documents": ["abcdefgh", "ab"]}, (1, 2, 1)),
    ("score", {"text_1": "abcd", "text_2": ["abcd", "abcdefgh"]}, (1, 1, 2)),
    ("score", {"queries": ["abcd"], "documents": ["ab"]}, (1, 1)),
]


@pytest.mark.parametrize(("kind", "body", "sizes"), POOLING_CASES)
def test_pooling_sizes(kind: str, body: dict[str, Any], sizes: tuple[int, ...]) -> None:
    assert extract.pooling(kind, {"model": "e", **body}, 4).sizes == sizes


def test_embedding_of_a_chat_counts_like_a_chat() -> None:
    body = {"model": "e", "messages": [{"role": "user", "content": "abcd"}]}
    assert extract.pooling("embeddings", body, 4).sizes == (
        PRIMING_TOKENS + PER_MESSAGE_TOKENS + 1,
    )


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("embeddings", {"model": "e"}, "input"),
        ("embeddings", {"model": "e", "input": []}, "input"),
        ("embeddings", {"model": "e", "input": [None]}, "input"),
        ("embeddings", {"input": "x"}, "model"),
        ("rerank", {"model": "e", "documents": ["x"]}, "query"),
        ("score", {"model": "e", "text_1": "x"}, "text_1"),
    ],
)
def test_bad_pooling_bodies_name_the_parameter(kind: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        extract.pooling(kind, body, 4)
    assert caught.value.param == param
