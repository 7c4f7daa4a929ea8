"""The workload sample format: one JSON object per line of a suite file.

```json
{"id": "reasoning-007", "task": "reasoning",
 "messages": [{"role": "user", "content": "..."}], "max_tokens": 256,
 "check": {"type": "number", "value": 42}, "answer": "... Answer: 42"}
```

``check`` is a machine check of the answer text; ``answer`` is a reference answer that passes
it (optional in user suites, required of the packaged ones). Check types:

- ``number``: the final number of the answer (the one after the last ``Answer:``, else the last
  number in the text) equals ``value`` within ``tolerance``.
- ``json``: the answer holds one JSON object (bare or in a code fence) whose fields equal
  ``fields``; with ``exact_keys`` (the default) any extra field fails, which is how a
  hallucinated field is caught.
- ``python_function``: the code (in a code fence, or the whole answer) parses, and defines a
  top-level function ``name`` with exactly the positional parameters ``args`` that returns a value.
- ``format``: every rule holds (bullet count, numbered-list count, word limit, words to include,
  lowercase only, a required start or end).
- ``regex``: the pattern matches somewhere in the answer; ``exact``: the stripped answer equals
  ``value``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from quantroute.base import FrozenModel
from quantroute.config import TaskType


class NumberCheck(FrozenModel):
    type: Literal["number"]
    value: float
    tolerance: float = Field(default=0.0, ge=0.0)


class JsonCheck(FrozenModel):
    type: Literal["json"]
    fields: dict[str, Any]
    exact_keys: bool = True


class PythonFunctionCheck(FrozenModel):
    type: Literal["python_function"]
    name: str = Field(min_length=1)
    args: tuple[str, ...] = ()


class RegexCheck(FrozenModel):
    type: Literal["regex"]
    pattern: str


class ExactCheck(FrozenModel):
    type: Literal["exact"]
    value: str
    case_sensitive: bool = False


class BulletsRule(FrozenModel):
    """Every non-empty line is a ``-``/``*``/``•`` bullet, and there are ``count`` of them."""

    rule: Literal["bullets"]
    count: int = Field(gt=0)


class NumberedRule(FrozenModel):
    """Every non-empty line is a numbered item (``1.`` or ``1)``), and there are ``count``."""

    rule: Literal["numbered"]
    count: int = Field(gt=0)


class MaxWordsRule(FrozenModel):
    """Fewer than ``value`` words."""

    rule: Literal["max_words"]
    value: int = Field(gt=0)


class IncludesRule(FrozenModel):
    """Each word or phrase appears (case-insensitive)."""

    rule: Literal["includes"]
    words: tuple[str, ...] = Field(min_length=1)


class LowercaseRule(FrozenModel):
    """No uppercase letter anywhere."""

    rule: Literal["lowercase"]


class StartsWithRule(FrozenModel):
    rule: Literal["starts_with"]
    text: str = Field(min_length=1)


class EndsWithRule(FrozenModel):
    rule: Literal["ends_with"]
    text: str = Field(min_length=1)


FormatRule = Annotated[
    BulletsRule
    | NumberedRule
    | MaxWordsRule
    | IncludesRule
    | LowercaseRule
    | StartsWithRule
    | EndsWithRule,
    Field(discriminator="rule"),
]


class FormatCheck(FrozenModel):
    type: Literal["format"]
    rules: tuple[FormatRule, ...] = Field(min_length=1)


Check = Annotated[
    NumberCheck | JsonCheck | PythonFunctionCheck | FormatCheck | RegexCheck | ExactCheck,
    Field(discriminator="type"),
]


class Message(FrozenModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Sample(FrozenModel):
    """One graded prompt."""

    id: str = Field(min_length=1)
    task: TaskType
    messages: tuple[Message, ...] = Field(min_length=1)
    max_tokens: int = Field(default=256, gt=0)
    check: Check
    answer: str | None = None

    @model_validator(mode="after")
    def _has_user_message(self) -> Sample:
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("a sample needs at least one user message")
        return self

    @property
    def last_user_text(self) -> str:
        """The content of the last user message: the key the simulator answers by."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""

    def openai_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]
