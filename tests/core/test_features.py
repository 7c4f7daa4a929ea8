from __future__ import annotations

from collections.abc import Mapping

import pytest

from quantroute.core.features import classify_task, estimate_chat_tokens, estimate_prompt_tokens


def test_every_message_counts_not_just_the_first() -> None:
    one: list[Mapping[str, object]] = [{"role": "system", "content": "x" * 400}]
    many: list[Mapping[str, object]] = [
        *one,
        {"role": "user", "content": "y" * 4000},
        {"role": "assistant", "content": [{"type": "text", "text": "z" * 400}]},
    ]
    assert estimate_chat_tokens(many, 4.0) - estimate_chat_tokens(one, 4.0) == 1100 + 8


def test_chars_per_token_is_configurable() -> None:
    msgs = [{"role": "user", "content": "a" * 300}]
    assert estimate_chat_tokens(msgs, 3.0) > estimate_chat_tokens(msgs, 4.0)


def test_token_id_prompts_count_exactly() -> None:
    assert estimate_prompt_tokens([1, 2, 3, 4, 5], 4.0) == 5
    assert estimate_prompt_tokens(["abcd" * 10, "ab"], 4.0) == 10


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Write a python function that parses dates", "coding"),
        ("```js\nconsole.log(1)\n```  why does this fail", "coding"),
        ("Extract the name and email fields as JSON", "extraction"),
        ("How many apples are left if I eat 3 of 12? Think step by step", "reasoning"),
        ("Tell me about your weekend", "chat"),
    ],
)
def test_task_heuristic(text: str, task: str) -> None:
    assert classify_task(text) == task


def test_header_override_and_json_mode() -> None:
    assert classify_task("def f(): pass", override="Chat") == "chat"
    assert classify_task("hello", wants_json=True) == "extraction"
    assert classify_task("hello", override="bogus") == "chat"


def test_long_prompts_are_classified_from_their_ends() -> None:
    document = "Write a python function that summarises this log.\n" + "lorem ipsum " * 40_000
    assert classify_task(document) == "coding"
    assert classify_task("lorem ipsum " * 20_000 + " extract the fields as JSON ") == "extraction"
