"""The workload trace: a seeded generator, the JSONL format, and the prompts built from it.

One JSON object per line::

    {"id": "r00042", "t": 12.375, "task": "coding", "tier": "standard",
     "prompt_tokens": 912, "output_tokens": 240, "max_tokens": 1024, "text_seed": 77,
     "messages": [...]}                       # optional

``t`` is the arrival in simulated seconds from the start of the trace. ``prompt_tokens`` is the
gateway's own estimate of the prompt (4 characters per token plus 4 per message plus 3).
``session``, ``turn``, ``after`` and ``think_s`` mark the turns of a multi-turn conversation
(``routingbench.sessions``): the replay sends a turn ``think_s`` after the ``after`` row's answer
ended. ``output_tokens`` is how many tokens the answer has (the simulator is told so through its answer
key; omit it to let the simulator pick). ``messages`` are sent verbatim when present; otherwise
they are synthesised from ``text_seed``: realistic text of exactly ``prompt_tokens`` whose task
type the gateway's heuristic infers (checked for every generated prompt).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from quantroute.config import TASK_TYPES, TaskType
from quantroute.core.features import chat_text, classify_task, estimate_chat_tokens
from quantroute.core.model import LatencyClass
from quantroute.replay import synth
from quantroute.replay.synth import LengthDist, TaskShape, TraceParams

__all__ = ["LengthDist", "TaskShape", "TraceParams", "TraceRequest"]
from quantroute.replay.trace import TraceRow
from quantroute.workloads import builtin_suites
from routingbench import textgen

Tier = Literal["premium", "standard"]
Message = dict[str, str]
CHARS_PER_TOKEN = 4
SYSTEM: dict[TaskType, str] = {
    "coding": "You are a senior software engineer. Answer with working code.",
    "reasoning": "You are a careful assistant who checks every number.",
    "extraction": "You turn documents into structured data. Be exact.",
    "chat": "You are a friendly assistant.",
}


@dataclass(frozen=True)
class TraceRequest:
    id: str
    t: float
    task: TaskType
    tier: Tier
    prompt_tokens: int
    max_tokens: int
    output_tokens: int | None = None
    text_seed: int | None = None
    messages: tuple[Message, ...] | None = None
    session: str | None = None
    """Multi-turn rows (``routingbench.sessions``): the conversation, the turn (0-based), the
    previous turn's id and the think time after its answer ended (simulated seconds)."""
    turn: int | None = None
    after: str | None = None
    think_s: float | None = None
    latency_class: str = "interactive"

    def to_json(self) -> dict[str, Any]:
        """The JSONL row; synthesised messages (``text_seed`` set) are not written out."""
        row = {k: v for k, v in asdict(self).items() if v is not None and k != "messages"}
        if self.latency_class == "interactive":
            del row["latency_class"]
        if self.messages is not None and self.text_seed is None:
            row["messages"] = list(self.messages)
        return row

    def last_user_text(self) -> str:
        users = [m["content"] for m in messages_for(self) if m.get("role") == "user"]
        return users[-1] if users else ""


# -- draws (the package's synthetic trace: quantroute.replay.synth) ---------------------------
def _one(params: TraceParams, rng: random.Random, number: int, t: float) -> TraceRequest:
    row = synth.draw(params, rng, number, t)
    tier: Tier = "premium" if row.tier == "premium" else "standard"
    return TraceRequest(
        id=row.id,
        t=t,
        task=row.task,
        tier=tier,
        prompt_tokens=row.prompt_tokens,
        max_tokens=row.max_tokens,
        output_tokens=row.output_tokens,
        text_seed=rng.randrange(2**31),
        latency_class=row.latency_class.value,
    )


def as_rows(rows: Sequence[TraceRequest]) -> list[TraceRow]:
    """The package's feature-only rows of a trace (for the simulated replay)."""
    return [
        TraceRow(r.id, r.t, r.task, r.prompt_tokens, r.max_tokens, r.output_tokens,
                 LatencyClass(r.latency_class), tier=r.tier)
        for r in rows
    ]  # fmt: skip


def generate(params: TraceParams) -> tuple[list[TraceRequest], list[tuple[float, float]]]:
    """The trace for ``params``: every row realised, last user messages unique."""
    rng = random.Random(params.seed)
    times, windows = synth.arrivals(params, rng)
    rows: list[TraceRequest] = []
    seen: set[str] = set()
    for number, t in enumerate(times):
        row = realise(_one(params, rng, number, t))
        while row.last_user_text() in seen:  # the simulator's answer key needs unique keys
            row = realise(replace(row, text_seed=rng.randrange(2**31), messages=None))
        seen.add(row.last_user_text())
        rows.append(row)
    return rows, windows


def realise(request: TraceRequest) -> TraceRequest:
    """The row with its messages built and ``prompt_tokens`` set to their estimate.

    Synthesised text hits the target exactly unless the instruction alone is longer; then the
    target becomes that minimum (a fixed point: rebuilding at it gives the same text).
    """
    for _ in range(4):
        messages = tuple(messages_for(request))
        tokens = estimate_chat_tokens(messages, CHARS_PER_TOKEN)
        if tokens == request.prompt_tokens:
            return replace(request, messages=messages)
        request = replace(request, prompt_tokens=tokens, messages=request.messages)
    raise ValueError(f"{request.id}: prompt length does not settle")


def save(path: Path, rows: Iterable[TraceRequest]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row.to_json(), separators=(",", ":")) + "\n")


def _parse_row(obj: dict[str, Any], lineno: int) -> TraceRequest:
    task = obj.get("task", "chat")
    if task not in TASK_TYPES:
        raise ValueError(f"line {lineno}: unknown task {task!r}")
    messages = obj.get("messages")
    if messages is None and obj.get("text_seed") is None:
        raise ValueError(f"line {lineno}: needs 'messages' or 'text_seed'")
    return TraceRequest(
        id=str(obj.get("id", f"l{lineno:05d}")),
        t=float(obj["t"]),
        task=task,
        tier="premium" if obj.get("tier") == "premium" else "standard",
        prompt_tokens=int(obj.get("prompt_tokens", 0)),
        max_tokens=int(obj.get("max_tokens", 256)),
        output_tokens=None if obj.get("output_tokens") is None else int(obj["output_tokens"]),
        text_seed=obj.get("text_seed"),
        messages=None if messages is None else tuple(messages),
        session=obj.get("session"),
        turn=obj.get("turn"),
        after=obj.get("after"),
        think_s=obj.get("think_s"),
        latency_class=str(obj.get("latency_class", "interactive")),
    )


def load(path: Path) -> list[TraceRequest]:
    """Read a JSONL trace (ours or a user's); rows are sorted by arrival, ``t`` made 0-based."""
    rows: list[TraceRequest] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            rows.append(_parse_row(json.loads(line), lineno))
    if not rows:
        raise ValueError(f"{path}: empty trace")
    rows.sort(key=lambda r: r.t)
    t0 = rows[0].t
    return [replace(realise(r), t=r.t - t0) for r in rows]


# -- prompt text -------------------------------------------------------------------------------
@cache
def _instructions() -> dict[TaskType, tuple[str, ...]]:
    """The packaged graded samples' user prompts, per task type: realistic instructions."""
    out: dict[TaskType, list[str]] = {t: [] for t in TASK_TYPES}
    for suite in builtin_suites():
        for sample in suite.samples:
            users = [m.content for m in sample.messages if m.role == "user"]
            if users:
                out[sample.task].append(users[-1])
    return {t: tuple(v) for t, v in out.items()}


def _fit(text: str, chars: int) -> str:
    """``text`` cut or padded to exactly ``chars`` characters, at a word boundary when cutting."""
    if len(text) >= chars:
        cut = text[:chars]
        space = cut.rfind(" ")
        cut = cut[:space] if space > chars * 0.9 else cut
        return cut + " " * (chars - len(cut))
    return text + " " * (chars - len(text))


def _context(task: TaskType, rng: random.Random, chars: int) -> str:
    if task == "coding":
        head, foot = "Here is the module we are working on:\n```python\n", "\n```"
        size = max(0, chars - len(head) - len(foot))
        return head + _fit(textgen.python_source(rng, size), size) + foot
    if task == "reasoning":
        return "Background notes from the depots:\n" + textgen.numeric_notes(rng, chars)
    if task == "extraction":
        return "Document:\n" + textgen.document(rng, chars)
    return textgen.prose(rng, chars)


CLOSING: Message = {"role": "assistant", "content": "Thanks for sharing all of that."}


def _chat_history(rng: random.Random, chars: int) -> list[Message]:
    """Earlier turns filling at most ``chars`` (message overhead included), ending on the assistant."""
    per_message = 4 * CHARS_PER_TOKEN
    chars -= len(CLOSING["content"]) + per_message
    messages: list[Message] = []
    while chars > 200 + per_message and len(messages) < 40:
        size = min(chars - per_message, rng.randint(300, 1800))
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": _fit(textgen.prose(rng, size), size)})
        chars -= size + per_message
    if len(messages) % 2 == 1:
        messages.append(dict(CLOSING))
    return messages


def _build(request: TraceRequest, rng: random.Random) -> list[Message]:
    task = request.task
    instruction = rng.choice(_instructions()[task])
    greeting = f"Hi, {textgen.person(rng)} from {rng.choice(textgen.CITIES)} here."
    system = {"role": "system", "content": SYSTEM[task]}
    overhead = 3 + 4 * 2
    budget = (request.prompt_tokens - overhead) * CHARS_PER_TOKEN - len(system["content"])
    tail = f"\n\n{greeting} {instruction}"
    if task == "chat":
        history = _chat_history(rng, budget - len(tail))
        used = sum(len(m["content"]) + 4 * CHARS_PER_TOKEN for m in history)
        room = budget - used - len(tail)
        lead = _fit(textgen.prose(rng, room), room) if room > 0 else ""
        return [system, *history, {"role": "user", "content": (lead + tail).strip()}]
    room = budget - len(tail)
    if room < 40:
        return [system, {"role": "user", "content": tail.strip()}]
    return [system, {"role": "user", "content": _fit(_context(task, rng, room), room) + tail}]


def messages_for(request: TraceRequest, attempts: int = 20) -> list[Message]:
    """The messages of a request: given ones verbatim, else synthesised (task-inferable)."""
    if request.messages is not None:
        return list(request.messages)
    seed = request.text_seed or 0
    for attempt in range(attempts):
        messages = _build(request, random.Random(seed * 7919 + attempt))
        if classify_task(chat_text(messages)) == request.task:
            return messages
    raise ValueError(f"{request.id}: no {request.task} prompt the heuristic recognises")


def answer_key(rows: Sequence[TraceRequest]) -> dict[str, tuple[str, str]]:
    """Simulator answer key: last user message -> (task, an answer of ``output_tokens`` pieces)."""
    key: dict[str, tuple[str, str]] = {}
    for row in rows:
        if row.output_tokens is None:
            continue
        answer = textgen.answer_text(random.Random(row.text_seed or row.id), row.output_tokens)
        key[row.last_user_text()] = (row.task, answer)
    return key
