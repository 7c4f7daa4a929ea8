from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantroute import workloads
from quantroute.core.features import (
    _CUES,
    chat_text,
    classify_task,
    cue_counts,
    estimate_chat_tokens,
    estimate_prompt_tokens,
)


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


# The cues as regexes, the form they were matched in before the scan of ``cue_counts``: the
# oracle the scan is held to (findall counts non-overlapping matches left to right).
REFERENCE: dict[str, re.Pattern[str]] = {
    "coding": re.compile(
        r"```|\b(?:def |class |function\b|import |python\b|javascript\b|typescript\b|"
        r"rust\b|sql\b|regex\b|compile|stack ?trace|bug\b|refactor|unit tests?\b|"
        r"implement\b|code\b)"
    ),
    "extraction": re.compile(
        r"\b(?:extract|json\b|fields?\b|parse\b|schema\b|key[- ]value|table\b|"
        r"list (?:all|every)\b|entities\b)"
    ),
    "reasoning": re.compile(
        r"\b(?:why\b|prove\b|step by step\b|calculate\b|how many\b|solve\b|reason|"
        r"how much\b|equation\b|probability\b)|\d+\s*[-+*/x×]\s*\d+"
    ),
}
# Every cue, each cut short and run on, and the characters that decide a boundary (letters,
# digits of other scripts, the underscore, spaces of other kinds, the arithmetic operators).
PIECES = [
    *(cue for cues in _CUES.values() for cue, _ in cues),
    *(cue[:-1] for cues in _CUES.values() for cue, _ in cues),
    *(cue + "s" for cues in _CUES.values() for cue, _ in cues),
    *(" " + word for cues in _CUES.values() for cue, _ in cues for word in re.split("[ -]", cue)),
    "```", "``", "stack  trace", "unit tests", "fieldset", "decode", "pythonic", "key_value",
    " ", "  ", "\n", "\t", "\u00a0", "_", "-", "x", "×", "1", "23", "+", "*", "/", ".", "s", "a",
    "é", "ß", "٣", "²", "X", "É",
]  # fmt: skip


def reference_counts(lowered: str) -> dict[str, int]:
    return {task: len(pattern.findall(lowered)) for task, pattern in REFERENCE.items()}


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES), max_size=14))
def test_cue_scan_counts_what_the_regexes_count(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert cue_counts(text) == reference_counts(text)


# The words of the cues one by one, with what may sit between and around them: cues that overlap
# themselves ("step by step by step") and cues glued to a word ("xstep by step") come up often.
WORDS = sorted(
    {w for cues in _CUES.values() for cue, _ in cues for w in re.split("[ -]", cue) if w}
)
GLUE = [" ", " ", " ", "-", "", "x", "X", "_", "é", "s", "1", "+", "`", "\n"]


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(GLUE)), max_size=16))
def test_cue_scan_counts_what_the_regexes_count_word_by_word(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert cue_counts(text) == reference_counts(text)


@pytest.mark.parametrize(
    "text",
    [
        "xstep by step by step",  # a cue glued to a word hides none that starts inside it
        "éstep by step by step",
        "_how many how many",
        "def def def class import x",
        "éjson json_ json",
        "fields fieldset field_ unit tests unit testsx",
        "`````` ```def ",
        "1+2+3 ٣×٣ 4 x 5",
        "stack trace stacktraces stack  trace key-value key_value",
    ],
)
def test_cue_scan_counts_what_the_regexes_count_on_the_hard_cases(text: str) -> None:
    assert cue_counts(text) == reference_counts(text)
    assert any(cue_counts(text).values())


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz _-s1 `×+é"), max_size=60))
def test_cue_scan_counts_what_the_regexes_count_on_loose_text(text: str) -> None:
    assert cue_counts(text) == reference_counts(text)


def test_cue_scan_counts_what_the_regexes_count_on_the_packaged_prompts() -> None:
    data = Path(workloads.__file__).parent / "data"
    texts = [
        chat_text(json.loads(line)["messages"]).lower()
        for path in sorted(data.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert len(texts) >= 100
    cued = 0
    for text in texts:
        counts = cue_counts(text)
        assert counts == reference_counts(text), text
        cued += any(counts.values())
    assert cued >= len(texts) // 2  # the prompts hold cues: the comparison is not of zeros
