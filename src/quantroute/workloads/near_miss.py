"""Plausibly wrong answers: the reference answer with the kind of mistake a weaker model makes.

Each one fails its sample's check (a test asserts it), so a simulator that answers wrongly with
these lets the profiler's measured pass rate recover the simulated quality exactly.
"""

from __future__ import annotations

import json
import math
import re
import zlib

from quantroute.workloads.schema import (
    BulletsRule,
    FormatCheck,
    FormatRule,
    IncludesRule,
    JsonCheck,
    LowercaseRule,
    MaxWordsRule,
    NumberCheck,
    NumberedRule,
    PythonFunctionCheck,
    Sample,
    StartsWithRule,
)
from quantroute.workloads.suites import builtin_suites

HALLUCINATED = {"confidence": 0.92, "source": "document", "verified": True}


def _pick(sample: Sample, n: int) -> int:
    return zlib.crc32(sample.id.encode()) % n


def _wrong_number(sample: Sample, check: NumberCheck, answer: str) -> str:
    deltas = (1.0, -1.0, 10.0, -2.0)
    offset = deltas[_pick(sample, len(deltas))]
    wrong = check.value + offset + math.copysign(check.tolerance, offset)
    shown = f"{wrong:g}" if wrong != int(wrong) else str(int(wrong))
    head = re.sub(r"\s*Answer:.*$", "", answer, flags=re.IGNORECASE | re.DOTALL)
    return f"{head}\nAnswer: {shown}"


def _wrong_json(sample: Sample, check: JsonCheck) -> str:
    fields = dict(check.fields)
    key = sorted(HALLUCINATED)[_pick(sample, len(HALLUCINATED))]
    fields[key] = HALLUCINATED[key]
    if not check.exact_keys:
        fields.pop(next(iter(check.fields)))
    return json.dumps(fields)


def _wrong_code(sample: Sample, check: PythonFunctionCheck, answer: str) -> str:
    if check.args and _pick(sample, 2):
        dropped = check.args[-1]
        return re.sub(rf",?\s*\b{dropped}\b(?=\))", "", answer, count=1)
    return answer.replace(f"def {check.name}(", f"def {check.name}_impl(", 1)


def _break_rule(rule: FormatRule, answer: str) -> str:
    if isinstance(rule, BulletsRule):
        return answer + "\n- One more thing: enjoy it."
    if isinstance(rule, NumberedRule):
        return answer + f"\n{rule.count + 1}. And one extra."
    if isinstance(rule, MaxWordsRule):
        return answer + " " + " ".join(["really"] * rule.value)
    if isinstance(rule, IncludesRule):
        out = answer
        for word in rule.words:
            out = re.sub(re.escape(word), "it", out, flags=re.IGNORECASE)
        return out
    if isinstance(rule, LowercaseRule):
        return answer[:1].upper() + answer[1:] + " See You There!"
    if isinstance(rule, StartsWithRule):
        return "Hello! " + answer
    return answer.rstrip("?.! ") + "."


def near_miss(sample: Sample) -> str:
    """A plausibly wrong answer to ``sample`` that fails its check."""
    answer = sample.answer or ""
    check = sample.check
    if isinstance(check, NumberCheck):
        return _wrong_number(sample, check, answer)
    if isinstance(check, JsonCheck):
        return _wrong_json(sample, check)
    if isinstance(check, PythonFunctionCheck):
        return _wrong_code(sample, check, answer)
    if isinstance(check, FormatCheck):
        return _break_rule(check.rules[_pick(sample, len(check.rules))], answer)
    return answer + " (unsure)" if answer else "I am not sure."


def wrong_answers() -> dict[str, str]:
    """Last user message text of every packaged sample -> a plausibly wrong answer."""
    return {s.last_user_text: near_miss(s) for suite in builtin_suites() for s in suite.samples}
