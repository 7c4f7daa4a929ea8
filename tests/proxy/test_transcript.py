"""The continuation's pure parts: what was relayed (whole events only), and the splice."""

from __future__ import annotations

import json

import pytest

from quantroute.proxy.transcript import Recorder, Splicer, StreamBroke, read_transcript, sse

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(content: str | None = None, *, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, object] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    return sse({**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_the_recorder_relays_whole_events_only_and_holds_back_a_partial_one() -> None:
    stream = chunk(role=True) + chunk("Hel") + chunk("lo")
    cut = len(stream) - 10
    recorder = Recorder(1 << 20)
    assert recorder.take(stream[:cut]) == chunk(role=True) + chunk("Hel")
    assert read_transcript(recorder.relayed()).text == "Hel"
    with pytest.raises(StreamBroke, match="before its final chunk"):
        recorder.check_ended()
    assert recorder.take(stream[cut:] + b"data: [DONE]\n\n").endswith(b"[DONE]\n\n")
    recorder.check_ended()


def test_an_error_event_is_kept_back_and_breaks_the_stream() -> None:
    error = b'data: {"error": {"message": "engine died", "code": 500}}\n\n'
    recorder = Recorder(1 << 20)
    out = recorder.take(chunk(role=True) + chunk("a") + error + b"data: [DONE]\n\n")
    assert out == chunk(role=True) + chunk("a") and recorder.error == "engine died"
    with pytest.raises(StreamBroke, match="engine died"):
        recorder.check_ended()


def test_the_transcript_counts_content_chunks_and_notices_tool_calls() -> None:
    tool = sse({**HEAD, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]})
    t = read_transcript(chunk(role=True) + chunk("a") + chunk("") + chunk("b") + tool)
    assert (t.text, t.tokens, t.role_sent, t.tool_calls) == ("ab", 2, True, True)
    assert t.head["id"] == "chatcmpl-1"


def test_the_splicer_drops_the_role_rewrites_ids_and_adds_up_usage() -> None:
    t = read_transcript(chunk(role=True) + chunk("a") + chunk("b"))
    other = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 9, "model": "m2"}
    usage = {"prompt_tokens": 12, "total_tokens": 15, "completion_tokens": 3}
    upstream = (
        sse({**other, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        + sse(
            {**other, "choices": [{"index": 0, "delta": {"content": "c"}, "finish_reason": "stop"}]}
        )
        + sse({**other, "choices": [], "usage": usage, "system_fingerprint": "fp"})
        + b"data: [DONE]\n\n"
    )
    splicer = Splicer(t, prefix_tokens=2, forward_usage=True)
    out = splicer.feed(upstream[:50]) + splicer.feed(upstream[50:])
    events = [json.loads(e[6:]) for e in out.decode().split("\n\n") if e]
    assert len(events) == 2 and splicer.done and splicer.finished
    assert all((e["id"], e["created"], e["model"]) == ("chatcmpl-1", 1, "m") for e in events)
    assert events[0]["choices"][0]["delta"] == {"content": "c"}
    assert events[1]["usage"] == {"prompt_tokens": 10, "total_tokens": 15, "completion_tokens": 5}
