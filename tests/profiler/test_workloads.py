"""The graded workload suites: packaged files, references, the grader and the loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantroute.config import TASK_TYPES, TaskType
from quantroute.workloads import (
    Sample,
    SuiteError,
    answer_key,
    builtin_suite,
    builtin_suites,
    grade,
    load_suite,
    near_miss,
    wrong_answers,
)
from quantroute.workloads.generate import render
from quantroute.workloads.schema import Check
from quantroute.workloads.suites import parse_suite

ALL = [s for suite in builtin_suites() for s in suite.samples]


def test_one_suite_per_task_with_enough_samples() -> None:
    for task in TASK_TYPES:
        suite = builtin_suite(task)
        assert {s.task for s in suite.samples} == {task}
        assert 25 <= len(suite.samples) <= 40
        assert [(i.task, i.size) for i in suite.infos()] == [(task, len(suite.samples))]


@pytest.mark.parametrize("sample", ALL, ids=[s.id for s in ALL])
def test_reference_passes_and_near_miss_fails(sample: Sample) -> None:
    assert sample.answer is not None
    assert grade(sample.check, sample.answer).passed, grade(sample.check, sample.answer)
    assert not grade(sample.check, near_miss(sample)).passed


def test_answer_key_covers_every_sample_with_a_passing_answer() -> None:
    key = answer_key()
    assert len(key) == len(ALL)  # last user messages are unique
    by_text = {s.last_user_text: s for s in ALL}
    for text, (task, answer) in key.items():
        sample = by_text[text]
        assert task == sample.task
        assert grade(sample.check, answer).passed
    assert wrong_answers().keys() == key.keys()


@pytest.mark.parametrize("task", TASK_TYPES)
def test_packaged_files_match_the_generator(task: TaskType) -> None:
    packaged = Path(__file__).parents[2] / "src/quantroute/workloads/data" / f"{task}.jsonl"
    assert packaged.read_text("utf-8") == render(task)


def _check(data: dict[str, object]) -> Check:
    sample = Sample.model_validate(
        {"id": "x", "task": "chat", "messages": [{"role": "user", "content": "q"}], "check": data}
    )
    return sample.check


CASES = [
    ({"type": "number", "value": 42}, "so 6 x 7\nAnswer: 42", True),
    ({"type": "number", "value": 42}, "Answer: 41", False),
    ({"type": "number", "value": 1250}, "The total is 1,250.", True),
    ({"type": "number", "value": 3}, "Answer: 3 apples, not 4", True),
    ({"type": "number", "value": 3}, "no idea", False),
    ({"type": "number", "value": 2.5, "tolerance": 0.01}, "Answer: 2.499", True),
    ({"type": "json", "fields": {"a": 1, "b": "x"}}, '```json\n{"a": 1, "b": "x"}\n```', True),
    ({"type": "json", "fields": {"a": 1, "b": "x"}}, 'Here: {"b": "x", "a": 1.0}', True),
    ({"type": "json", "fields": {"a": 1}}, '{"a": 1, "confidence": 0.9}', False),
    ({"type": "json", "fields": {"a": 1}, "exact_keys": False}, '{"a": 1, "c": 2}', True),
    ({"type": "json", "fields": {"a": 1, "b": 2}}, '{"a": 1}', False),
    ({"type": "json", "fields": {"a": True}}, '{"a": 1}', False),
    ({"type": "json", "fields": {"a": 1}}, "[1]", False),
    ({"type": "json", "fields": {"a": 1}}, "{not json", False),
    (
        {"type": "python_function", "name": "f", "args": ["a", "b"]},
        "def f(a, b):\n  return a",
        True,
    ),
    ({"type": "python_function", "name": "f", "args": ["a"]}, "def f(a, b):\n  return a", False),
    ({"type": "python_function", "name": "f", "args": ["a"]}, "def f(a):\n  print(a)", False),
    ({"type": "python_function", "name": "f", "args": ["a"]}, "def f(a)\n  return a", False),
    ({"type": "python_function", "name": "f", "args": ["a"]}, "def g(a):\n  return a", False),
    ({"type": "format", "rules": [{"rule": "bullets", "count": 2}]}, "- a\n* b", True),
    ({"type": "format", "rules": [{"rule": "bullets", "count": 2}]}, "Sure:\n- a\n- b", False),
    ({"type": "format", "rules": [{"rule": "numbered", "count": 2}]}, "1. a\n2) b", True),
    ({"type": "format", "rules": [{"rule": "max_words", "value": 3}]}, "one two", True),
    ({"type": "format", "rules": [{"rule": "max_words", "value": 3}]}, "one two three", False),
    (
        {"type": "format", "rules": [{"rule": "includes", "words": ["Chess"]}]},
        "the chess club",
        True,
    ),
    ({"type": "format", "rules": [{"rule": "lowercase"}]}, "Hello", False),
    (
        {"type": "format", "rules": [{"rule": "starts_with", "text": "Thank you"}]},
        " thank you!",
        True,
    ),
    ({"type": "format", "rules": [{"rule": "ends_with", "text": "?"}]}, "ok.", False),
    ({"type": "regex", "pattern": r"\bblue\b"}, "the sky is blue", True),
    ({"type": "exact", "value": "Paris"}, " paris ", True),
    ({"type": "exact", "value": "Paris", "case_sensitive": True}, "paris", False),
]


@pytest.mark.parametrize(("check", "text", "passed"), CASES)
def test_grader(check: dict[str, object], text: str, passed: bool) -> None:
    assert grade(_check(check), text).passed is passed


def test_load_user_suite(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    line = {
        "id": "m1",
        "task": "extraction",
        "messages": [{"role": "user", "content": "Extract the colour: the car is red."}],
        "check": {"type": "json", "fields": {"colour": "red"}},
    }
    path.write_text("# comment\n" + json.dumps(line) + "\n\n", encoding="utf-8")
    suite = load_suite(path)
    assert suite.name == "mine"
    assert suite.samples[0].answer is None and suite.samples[0].max_tokens == 256


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{}\n", ":1: invalid sample at id"),
        ('{"id": "a"\n', ":1: not valid JSON"),
        ("", "no samples"),
        (
            '{"id":"a","task":"chat","messages":[{"role":"system","content":"s"}],'
            '"check":{"type":"exact","value":"x"}}',
            "at least one user message",
        ),
        (
            '{"id":"a","task":"poetry","messages":[{"role":"user","content":"s"}],'
            '"check":{"type":"exact","value":"x"}}',
            "invalid sample at task",
        ),
    ],
)
def test_bad_suite_names_the_line(text: str, needle: str) -> None:
    with pytest.raises(SuiteError, match=needle):
        parse_suite(text, "bad", "bad.jsonl")


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="cannot read"):
        load_suite(tmp_path / "absent.jsonl")
