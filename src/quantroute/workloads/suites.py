"""Load graded workload suites: the packaged ones (one per task type) and users' JSONL files."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from quantroute.config import TASK_TYPES, TaskType
from quantroute.core.matrix import SuiteInfo
from quantroute.errors import SuiteError
from quantroute.workloads.schema import Sample


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    samples: tuple[Sample, ...]

    def infos(self) -> tuple[SuiteInfo, ...]:
        """One entry per task type the suite holds: its name, task and size."""
        counts = Counter(s.task for s in self.samples)
        return tuple(SuiteInfo(name=self.name, task=t, size=counts[t]) for t in sorted(counts))


def parse_suite(text: str, name: str, source: str) -> Suite:
    samples: list[Sample] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            samples.append(Sample.model_validate(json.loads(line)))
        except ValueError as exc:
            raise SuiteError(f"{source}:{lineno}: {_describe(exc)}") from None
    if not samples:
        raise SuiteError(f"{source}: no samples")
    ids = Counter(s.id for s in samples)
    dup = sorted(i for i, n in ids.items() if n > 1)
    if dup:
        raise SuiteError(f"{source}: duplicate sample id(s) {dup[:5]}")
    return Suite(name, tuple(samples))


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(sample)"
        return f"invalid sample at {where}: {err['msg']}"
    return f"not valid JSON: {exc}"


def load_suite(path: str | Path) -> Suite:
    """A user suite: JSONL, one sample per line; the suite is named after the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read workload suite: {exc.strerror}") from None
    return parse_suite(text, path.stem, str(path))


def builtin_suite(task: TaskType) -> Suite:
    data = resources.files("quantroute.workloads").joinpath("data", f"{task}.jsonl")
    return parse_suite(data.read_text("utf-8"), f"builtin-{task}", f"builtin:{task}.jsonl")


def builtin_suites() -> tuple[Suite, ...]:
    """The packaged suites, one per task type."""
    return tuple(builtin_suite(task) for task in TASK_TYPES)


def answer_key() -> dict[str, tuple[str, str]]:
    """Last user message text of every packaged sample -> (task type, reference answer).

    The simulator answers graded prompts from this table.
    """
    key: dict[str, tuple[str, str]] = {}
    for suite in builtin_suites():
        for sample in suite.samples:
            key[sample.last_user_text] = (sample.task, sample.answer or "")
    return key
