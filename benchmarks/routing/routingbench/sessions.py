"""Traffic that shares prefixes: multi-turn chats and questions about shared documents.

Three kinds of rows, mixed into one seeded trace (``SessionParams``):

* **Chat sessions.** A session starts with one of a few long system prompts (an assistant's
  instructions and reference material: shared by many users) and runs several turns. Each turn
  sends the whole conversation so far (system prompt, every earlier question and answer) plus a
  new question, so the context grows turn by turn. The next turn is sent a think time after the
  previous answer has *ended* (the replay enforces that order; the trace's ``t`` of a later turn
  is only its planned time). The previous answer is the exact text the simulator will produce
  (its answer key), as a client would send it back.
* **Document questions.** One-shot requests about one of a few long shared documents (a
  contract, a manual): the document first, then a different question each time.
* **One-shot requests** from the standard generator (``workload.generate``): unique prompts that
  share at most a short task system prompt.

A session row carries ``session``, ``turn`` (0-based), ``after`` (the id of the previous turn)
and ``think_s`` (simulated seconds between the previous answer's end and this send).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from routingbench import textgen
from routingbench.workload import (
    CHARS_PER_TOKEN,
    LengthDist,
    Message,
    TraceParams,
    TraceRequest,
    generate,
    realise,
)

CONTEXT_LIMIT = 8192
"""The fleet's max_model_len: a session ends before prompt + max_tokens would pass it."""
CHAT_MAX_TOKENS = 768
DOC_MAX_TOKENS = 512

_SYSTEM_TOKENS = LengthDist(1800, 0.35, 800, 3000)
_TURNS = LengthDist(4, 0.5, 2, 10)
_QUESTION_TOKENS = LengthDist(60, 0.8, 10, 400)
_ANSWER_TOKENS = LengthDist(160, 0.6, 20, 600)
_THINK_S = LengthDist(12, 0.7, 3, 60)
_DOC_TOKENS = LengthDist(3200, 0.3, 1500, 5000)


@dataclass(frozen=True)
class SessionParams:
    seed: int = 11
    duration_s: float = 180.0
    session_rate_per_s: float = 0.75
    """New chat sessions per simulated second, over the first ``session_window`` of the trace
    (their later turns run on past it)."""
    session_window: float = 0.65
    system_prompts: int = 4
    system_tokens: LengthDist = _SYSTEM_TOKENS
    turns: LengthDist = _TURNS
    question_tokens: LengthDist = _QUESTION_TOKENS
    answer_tokens: LengthDist = _ANSWER_TOKENS
    think_s: LengthDist = _THINK_S
    doc_rate_per_s: float = 1.4
    documents: int = 6
    doc_tokens: LengthDist = _DOC_TOKENS
    oneshot_rate_per_s: float = 2.0
    oneshot: TraceParams = field(
        default_factory=lambda: TraceParams(seed=23, long_share=0.0, burst_factor=1.0)
    )

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _text(rng: random.Random, tokens: int, kind: str = "prose") -> str:
    chars = max(8, tokens * CHARS_PER_TOKEN)
    body = textgen.document(rng, chars) if kind == "document" else textgen.prose(rng, chars)
    return body[:chars]


def _system_prompts(p: SessionParams, rng: random.Random) -> list[str]:
    return [
        f"You are assistant number {i} of the customer desk. Follow the reference below.\n\n"
        + _text(rng, p.system_tokens.sample(rng))
        for i in range(p.system_prompts)
    ]


def _question(rng: random.Random, tokens: int, tag: str) -> str:
    return f"{_text(rng, tokens)}\n\nWhat do you suggest? (ref {tag})"


def answer_for(row_id: str, tokens: int) -> str:
    """The simulator's answer to a row (the answer key uses the same rule: seeded by its id)."""
    return textgen.answer_text(random.Random(row_id), tokens)


def _session(
    p: SessionParams, rng: random.Random, number: int, start: float, systems: list[str]
) -> list[TraceRequest]:
    system = rng.choice(systems)
    messages: list[Message] = [{"role": "system", "content": system}]
    rows: list[TraceRequest] = []
    t, previous = start, None
    for turn in range(p.turns.sample(rng)):
        row_id = f"s{number:04d}t{turn:02d}"
        question = _question(rng, p.question_tokens.sample(rng), row_id)
        think = 0.0 if turn == 0 else float(p.think_s.sample(rng))
        row = realise(
            TraceRequest(
                id=row_id,
                t=round(t + think, 4),
                task="chat",
                tier="standard",
                prompt_tokens=0,
                max_tokens=CHAT_MAX_TOKENS,
                output_tokens=p.answer_tokens.sample(rng),
                messages=(*messages, {"role": "user", "content": question}),
                session=f"s{number:04d}",
                turn=turn,
                after=previous,
                think_s=think if turn else None,
            )
        )
        if row.prompt_tokens + row.max_tokens > CONTEXT_LIMIT:
            break
        rows.append(row)
        answer = answer_for(row.id, row.output_tokens or 1)
        messages = [*messages, {"role": "user", "content": question}]
        messages.append({"role": "assistant", "content": answer})
        # planned: answered after about 40 ms per output token, then the think time
        t = row.t + 0.04 * (row.output_tokens or 1)
        previous = row.id
    return rows


def _poisson(rng: random.Random, rate: float, horizon: float) -> list[float]:
    times, t = [], rng.expovariate(rate)
    while t < horizon:
        times.append(round(t, 4))
        t += rng.expovariate(rate)
    return times


def _document_rows(p: SessionParams, rng: random.Random) -> list[TraceRequest]:
    docs = [_text(rng, p.doc_tokens.sample(rng), "document") for _ in range(p.documents)]
    system: Message = {"role": "system", "content": "Answer from the document only."}
    rows = []
    for number, t in enumerate(_poisson(rng, p.doc_rate_per_s, p.duration_s)):
        row_id = f"d{number:04d}"
        doc = rng.choice(docs)
        question = f"Document:\n{doc}\n\n" + _question(rng, rng.randint(15, 60), row_id)
        rows.append(
            realise(
                TraceRequest(
                    id=row_id,
                    t=t,
                    task="chat",
                    tier="standard",
                    prompt_tokens=0,
                    max_tokens=DOC_MAX_TOKENS,
                    output_tokens=p.answer_tokens.sample(rng),
                    messages=(system, {"role": "user", "content": question}),
                )
            )
        )
    return rows


def _oneshot_rows(p: SessionParams) -> list[TraceRequest]:
    count = round(p.oneshot_rate_per_s * p.duration_s)
    if count == 0:
        return []
    params = replace(p.oneshot, requests=count, rate_per_s=p.oneshot_rate_per_s)
    rows, _ = generate(params)
    return [replace(r, id=f"o{i:04d}") for i, r in enumerate(rows)]


def generate_mixed(p: SessionParams) -> list[TraceRequest]:
    """The mixed trace, sorted by (planned) arrival."""
    rng = random.Random(p.seed)
    systems = _system_prompts(p, rng)
    rows: list[TraceRequest] = []
    window = p.duration_s * p.session_window
    for number, start in enumerate(_poisson(rng, p.session_rate_per_s, window)):
        rows += _session(p, rng, number, start, systems)
    rows += _document_rows(p, rng)
    rows += _oneshot_rows(p)
    rows.sort(key=lambda r: r.t)
    return rows


def kind_of(row: TraceRequest) -> str:
    """ "session", "document" or "oneshot"."""
    if row.session is not None:
        return "session"
    return "document" if row.id.startswith("d") else "oneshot"


def describe(rows: list[TraceRequest]) -> dict[str, Any]:
    kinds = [kind_of(r) for r in rows]
    sessions = {r.session for r in rows if r.session}
    turns = [r for r in rows if r.session]
    return {
        "requests": len(rows),
        "duration_s": round(max(r.t for r in rows), 1),
        "by_kind": {k: kinds.count(k) for k in ("session", "document", "oneshot")},
        "sessions": len(sessions),
        "mean_turns": round(len(turns) / max(1, len(sessions)), 2),
        "prompt_tokens_total": sum(r.prompt_tokens for r in rows),
        "prompt_tokens_mean": round(sum(r.prompt_tokens for r in rows) / len(rows)),
        "session_prompt_tokens_mean": round(
            sum(r.prompt_tokens for r in turns) / max(1, len(turns))
        ),
    }
