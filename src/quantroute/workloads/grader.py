"""Grade an answer text against a sample's machine check. Pure functions, no code is executed.

``grade(check, text)`` returns a :class:`Grade`: passed or not, and why not.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from quantroute.workloads.schema import (
    BulletsRule,
    Check,
    ExactCheck,
    FormatCheck,
    FormatRule,
    IncludesRule,
    JsonCheck,
    LowercaseRule,
    MaxWordsRule,
    NumberCheck,
    NumberedRule,
    PythonFunctionCheck,
    RegexCheck,
    StartsWithRule,
)

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"answer\s*[:=]\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")
_BULLET = re.compile(r"^\s*[-*•]\s+\S")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S")
_WORD = re.compile(r"[A-Za-z0-9']+")


@dataclass(frozen=True, slots=True)
class Grade:
    passed: bool
    reason: str = ""


PASS = Grade(True)


def _fail(reason: str) -> Grade:
    return Grade(False, reason)


def fenced_or_whole(text: str) -> str:
    """The first fenced code block's body, else the whole text."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def _to_float(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def final_number(text: str) -> float | None:
    """The number after the last ``Answer:``, else the last number in the text."""
    answers = _ANSWER.findall(text)
    if answers:
        return _to_float(answers[-1])
    numbers = [n for n in _NUMBER.findall(text) if any(c.isdigit() for c in n)]
    return _to_float(numbers[-1].rstrip(".")) if numbers else None


def _grade_number(check: NumberCheck, text: str) -> Grade:
    got = final_number(text)
    if got is None:
        return _fail("no number in the answer")
    if math.isclose(got, check.value, rel_tol=0.0, abs_tol=check.tolerance + 1e-9):
        return PASS
    return _fail(f"number {got:g} != expected {check.value:g}")


def extract_json_object(text: str) -> Any:
    """Parse the JSON object in ``text``: a fenced block, the whole text, or its outermost braces."""
    candidates = [fenced_or_whole(text).strip(), text.strip()]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError("no JSON object in the answer")


def _grade_json(check: JsonCheck, text: str) -> Grade:
    try:
        data = extract_json_object(text)
    except ValueError as exc:
        return _fail(str(exc))
    if not isinstance(data, dict):
        return _fail(f"JSON is a {type(data).__name__}, not an object")
    missing = sorted(set(check.fields) - set(data))
    if missing:
        return _fail(f"missing field(s) {missing}")
    extra = sorted(set(data) - set(check.fields))
    if check.exact_keys and extra:
        return _fail(f"unexpected field(s) {extra}")
    wrong = sorted(k for k, v in check.fields.items() if not _json_equal(data[k], v))
    return _fail(f"wrong value(s) for {wrong}") if wrong else PASS


def _json_equal(got: Any, want: Any) -> bool:
    if isinstance(want, str) and isinstance(got, str):
        return got.strip() == want.strip()
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, int | float) and isinstance(got, int | float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def _grade_python(check: PythonFunctionCheck, text: str) -> Grade:
    code = fenced_or_whole(text)
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return _fail(f"code does not parse: {exc.msg} (line {exc.lineno})")
    funcs = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == check.name
    ]
    if not funcs:
        return _fail(f"no top-level function {check.name!r}")
    func = funcs[-1]
    params = tuple(a.arg for a in (*func.args.posonlyargs, *func.args.args))
    if params != check.args:
        return _fail(f"signature {check.name}({', '.join(params)}) != ({', '.join(check.args)})")
    returns = any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(func))
    return PASS if returns else _fail(f"{check.name} never returns a value")


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


def _grade_rule(rule: FormatRule, text: str) -> Grade:
    if isinstance(rule, BulletsRule | NumberedRule):
        pattern = _BULLET if isinstance(rule, BulletsRule) else _NUMBERED
        lines = _lines(text)
        items = sum(1 for line in lines if pattern.match(line))
        if items != len(lines):
            return _fail(f"{len(lines) - items} line(s) are not {rule.rule} items")
        return (
            PASS if items == rule.count else _fail(f"{items} {rule.rule} items, not {rule.count}")
        )
    if isinstance(rule, MaxWordsRule):
        words = len(_WORD.findall(text))
        return PASS if words < rule.value else _fail(f"{words} words, limit {rule.value}")
    if isinstance(rule, IncludesRule):
        absent = [w for w in rule.words if w.lower() not in text.lower()]
        return _fail(f"does not mention {absent}") if absent else PASS
    if isinstance(rule, LowercaseRule):
        return _fail("contains uppercase letters") if any(c.isupper() for c in text) else PASS
    if isinstance(rule, StartsWithRule):
        ok = text.strip().lower().startswith(rule.text.lower())
        return PASS if ok else _fail(f"does not start with {rule.text!r}")
    ok = text.strip().endswith(rule.text)
    return PASS if ok else _fail(f"does not end with {rule.text!r}")


def _grade_format(check: FormatCheck, text: str) -> Grade:
    for rule in check.rules:
        result = _grade_rule(rule, text)
        if not result.passed:
            return result
    return PASS


def grade(check: Check, text: str) -> Grade:
    """Whether ``text`` passes ``check``; the reason when it does not."""
    if isinstance(check, NumberCheck):
        return _grade_number(check, text)
    if isinstance(check, JsonCheck):
        return _grade_json(check, text)
    if isinstance(check, PythonFunctionCheck):
        return _grade_python(check, text)
    if isinstance(check, FormatCheck):
        return _grade_format(check, text)
    if isinstance(check, RegexCheck):
        found = re.search(check.pattern, text) is not None
        return PASS if found else _fail(f"no match for /{check.pattern}/")
    return _grade_exact(check, text)


def _grade_exact(check: ExactCheck, text: str) -> Grade:
    got, want = text.strip(), check.value.strip()
    if not check.case_sensitive:
        got, want = got.lower(), want.lower()
    return PASS if got == want else _fail("answer differs from the expected text")
