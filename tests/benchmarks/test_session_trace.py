"""The prefix benchmark's trace: conversations that grow, shared documents, closed-loop turns."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from routingbench import fleet_proc, sessions, workload
from routingbench.replay import replay

from quantroute.core.features import estimate_chat_tokens
from quantroute.sim.text import split_pieces

SMALL = sessions.SessionParams(duration_s=40.0, oneshot_rate_per_s=0.5)


@pytest.fixture(scope="module")
def rows() -> list[workload.TraceRequest]:
    return sessions.generate_mixed(SMALL)


def test_seeded_and_mixed(rows: list[workload.TraceRequest]) -> None:
    again = sessions.generate_mixed(SMALL)
    assert [r.to_json() for r in again] == [r.to_json() for r in rows]
    summary = sessions.describe(rows)
    assert all(summary["by_kind"][k] > 0 for k in ("session", "document", "oneshot"))
    assert summary["mean_turns"] >= 2


def test_a_turn_resends_the_conversation_with_the_simulators_answer(
    rows: list[workload.TraceRequest],
) -> None:
    by_id = {r.id: r for r in rows}
    key = workload.answer_key(rows)
    turns = [r for r in rows if r.after is not None]
    assert turns
    for row in turns:
        previous = by_id[row.after or ""]
        assert row.session == previous.session
        assert row.turn == (previous.turn or 0) + 1
        assert row.think_s is not None and row.think_s > 0
        sent = workload.messages_for(row)
        before = workload.messages_for(previous)
        assert sent[: len(before)] == before  # the whole earlier conversation, verbatim
        answer = sent[len(before)]
        assert answer["role"] == "assistant"
        assert answer["content"] == key[previous.last_user_text()][1]
        assert len(split_pieces(answer["content"])) == previous.output_tokens
        assert row.prompt_tokens > previous.prompt_tokens
        assert row.prompt_tokens + row.max_tokens <= sessions.CONTEXT_LIMIT
        assert estimate_chat_tokens(sent, 4) == row.prompt_tokens


def test_documents_and_system_prompts_are_shared(rows: list[workload.TraceRequest]) -> None:
    firsts = [workload.messages_for(r) for r in rows if r.turn == 0]
    systems = {m[0]["content"] for m in firsts}
    assert 1 < len(systems) <= SMALL.system_prompts < len(firsts)
    docs = [
        workload.messages_for(r)[1]["content"].split("\n\nWhat do you suggest?")[0]
        for r in rows
        if sessions.kind_of(r) == "document"
    ]
    assert len({d[:2000] for d in docs}) <= SMALL.documents < len(docs)
    assert len({r.last_user_text() for r in rows}) == len(rows)  # answer-key keys are unique


def test_answer_key_round_trip(rows: list[workload.TraceRequest], tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    fleet_proc.write_answer_key(path, rows)
    key, _ = fleet_proc.read_answer_key(path)
    assert len(key) == len(rows)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[tuple[str, float, str | None]]]]:
    """A fake chat endpoint on loopback that records (last user text, time, session header) and
    answers a one-token stream after 50 ms."""
    seen: list[tuple[str, float, str | None]] = []
    loop = asyncio.get_running_loop()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(
            (body["messages"][-1]["content"], loop.time(), request.headers.get("x-session-id"))
        )
        await asyncio.sleep(0.05)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_replay_sends_a_turn_only_after_the_previous_answer_and_its_think_time(
    recorder: tuple[str, list[tuple[str, float, str | None]]],
) -> None:
    url, seen = recorder
    conversation = [r for r in sessions.generate_mixed(SMALL) if r.session == "s0000"][:3]
    assert len(conversation) >= 2
    # planned times all at 0: only the closed loop can space them out
    rows = [replace(r, t=0.0, think_s=1.0 if r.turn else None) for r in conversation]
    outcomes, _ = await replay(
        url, rows, lambda _: "m", time_scale=10.0, timeout_s=10.0, session_header=True
    )
    assert all(o.status == 200 and o.first is not None for o in outcomes)
    assert [text for text, _, _ in seen] == [r.last_user_text() for r in rows]
    assert {header for _, _, header in seen} == {"s0000"}
    for before, after in itertools.pairwise(outcomes):
        assert after.sent >= (before.end or 0.0) + 0.1 - 0.005  # think 1 s at scale 10
        assert after.due == pytest.approx(after.sent, abs=0.05)
