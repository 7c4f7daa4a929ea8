"""Answer quality of a simulated variant on graded workload samples.

An answer key maps the text of a sample's last user message to (task type, reference
answer). A variant answers a keyed sample correctly (the reference, verbatim) with
probability `quality[task]`, and otherwise with a plausibly wrong answer: the sample's
entry in `wrong_answers` when given (`quantroute.workloads.wrong_answers()` holds near
misses that fail each packaged sample's check), else one made here of the kind
quantized models give: a wrong number, JSON that is valid but has a wrong or
hallucinated field, code without the required signature, or a broken format. Which
samples a variant gets right is fixed by (seed, variant, sample text), so a profiler
measuring the same variant twice sees the same answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping

from quantroute.sim.profiles import Quality

AnswerKey = Mapping[str, tuple[str, str]]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DEF = re.compile(r"\b(def|function|fn|func)\s+([A-Za-z_]\w*)")
_HALLUCINATED_FIELDS = (("confidence", 0.97), ("source", "inferred"), ("verified", True))


def _uniforms(*parts: str) -> tuple[float, float]:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    scale = float(2**64)
    return (
        int.from_bytes(digest[:8], "big") / scale,
        int.from_bytes(digest[8:16], "big") / scale,
    )


class QualityOracle:
    """Decides, per sample, what a variant answers."""

    def __init__(
        self,
        variant: str,
        quality: Quality,
        answer_key: AnswerKey,
        seed: int,
        wrong_answers: Mapping[str, str] | None = None,
    ) -> None:
        self.variant = variant
        self.quality = quality
        self.answer_key = answer_key
        self.seed = seed
        self.wrong_answers: Mapping[str, str] = wrong_answers or {}

    def answer(self, prompt: str) -> str | None:
        """The variant's answer to a keyed sample, or None for prompts not in the key."""
        entry = self.answer_key.get(prompt)
        if entry is None:
            return None
        task, reference = entry
        draw, choice = _uniforms(str(self.seed), self.variant, prompt)
        if draw < self.quality.for_task(task):
            return reference
        known = self.wrong_answers.get(prompt)
        return known if known is not None else wrong_answer(reference, task, choice)


def wrong_answer(reference: str, task: str, choice: float) -> str:
    """A plausible but wrong answer to `reference`; `choice` in [0, 1) picks how."""
    for corrupt in (_wrong_json, _wrong_code, _wrong_number):
        wrong = corrupt(reference, choice)
        if wrong is not None and wrong != reference:
            return wrong
    return _broken_format(reference, task, choice)


def _wrong_json(reference: str, choice: float) -> str | None:
    try:
        value = json.loads(reference)
    except ValueError:
        return None
    if not isinstance(value, dict) or not value:
        return None
    corrupted = dict(value)
    keys = sorted(corrupted)
    key = keys[int(choice * 7919) % len(keys)]
    if choice < 0.5:
        name, extra = _HALLUCINATED_FIELDS[int(choice * 6) % len(_HALLUCINATED_FIELDS)]
        corrupted[name if name not in corrupted else f"{name}_2"] = extra
    else:
        corrupted[key] = _perturb(corrupted[key])
    return json.dumps(corrupted)


def _perturb(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + " (approx.)" if value else "unknown"
    if isinstance(value, list):
        return value[:-1] if value else ["unknown"]
    return None


def _wrong_code(reference: str, choice: float) -> str | None:
    match = _DEF.search(reference)
    if match is None:
        return None
    if choice < 0.5:
        name = match.group(2)
        return reference.replace(f"{match.group(1)} {name}", f"{match.group(1)} {name}_impl", 1)
    body = reference[match.end() :].split("\n", 1)
    return body[1] if len(body) == 2 else "pass"


def _wrong_number(reference: str, choice: float) -> str | None:
    numbers = list(_NUMBER.finditer(reference))
    if not numbers:
        return None
    last = numbers[-1]
    deltas: tuple[Callable[[float], float], ...] = (
        lambda x: x + 1,
        lambda x: x - 1,
        lambda x: x * 2,
        lambda x: x + 10,
    )
    value = float(last.group())
    wrong = deltas[int(choice * len(deltas))](value)
    text = str(int(wrong)) if "." not in last.group() else f"{wrong:g}"
    return reference[: last.start()] + text + reference[last.end() :]


def _broken_format(reference: str, task: str, choice: float) -> str:
    words = reference.split()
    if task == "chat" and choice < 0.5:
        return "I'm sorry, I can't help with that request."
    if len(words) > 3:
        return " ".join(words[: len(words) // 2]) + " ..."
    return "I don't know."
