"""Regenerate the packaged suites: ``python -m quantroute.workloads.generate [OUT_DIR]``.

The generators are deterministic (fixed seeds), so the packaged files are reproducible and a
test checks that they match this code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantroute.config import TaskType
from quantroute.workloads.gen_chat import chat_samples
from quantroute.workloads.gen_coding import coding_samples
from quantroute.workloads.gen_extraction import extraction_samples
from quantroute.workloads.gen_reasoning import reasoning_samples

GENERATORS: dict[TaskType, Callable[[], list[dict[str, Any]]]] = {
    "coding": coding_samples,
    "reasoning": reasoning_samples,
    "extraction": extraction_samples,
    "chat": chat_samples,
}


def render(task: TaskType) -> str:
    """The JSONL text of the packaged suite for ``task``."""
    return "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in GENERATORS[task]())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    for task in GENERATORS:
        (out / f"{task}.jsonl").write_text(render(task), encoding="utf-8")
        print(f"wrote {out / f'{task}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
