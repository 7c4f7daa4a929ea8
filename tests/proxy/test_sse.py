"""The SSE usage tap on its own: every way a stream can be cut into reads gives the same result."""

from __future__ import annotations

import json
import re

import pytest

from quantroute.proxy.sse import SSEUsageTap, Usage, usage_from_body, usage_from_event


def event(obj: object, sep: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + sep


def chunk(content: str) -> dict[str, object]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}],
    }


USAGE = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


def stream(sep: bytes) -> tuple[bytes, bytes]:
    """(what the backend sends, what the client must see once the usage event is stripped)."""
    head = b"".join(event(chunk(t), sep) for t in ("Hel", "lo", " there"))
    done = b"data: [DONE]" + sep
    return head + event(USAGE, sep) + done, head + done


def feed_all(tap: SSEUsageTap, parts: list[bytes]) -> bytes:
    return b"".join(tap.feed(p) for p in parts) + tap.flush()


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"], ids=["lf", "crlf"])
def test_usage_event_is_stripped_wherever_the_stream_is_cut(sep: bytes) -> None:
    sent, expected = stream(sep)
    for cut in range(len(sent) + 1):
        tap = SSEUsageTap(strip_usage=True)
        assert feed_all(tap, [sent[:cut], sent[cut:]]) == expected, cut
        assert tap.finish() == Usage(12, 3), cut


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"], ids=["lf", "crlf"])
def test_byte_by_byte_and_in_three_pieces(sep: bytes) -> None:
    sent, expected = stream(sep)
    tap = SSEUsageTap(strip_usage=True)
    assert feed_all(tap, [sent[i : i + 1] for i in range(len(sent))]) == expected
    assert tap.finish() == Usage(12, 3)
    usage_at = sent.index(b'"usage"')
    for first in range(0, usage_at, 7):
        tap = SSEUsageTap(strip_usage=True)
        parts = [sent[:first], sent[first:usage_at], sent[usage_at:]]  # usage split across reads
        assert feed_all(tap, parts) == expected, first
        assert tap.finish() == Usage(12, 3)


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"], ids=["lf", "crlf"])
def test_complete_events_go_out_as_soon_as_they_end(sep: bytes) -> None:
    tap = SSEUsageTap(strip_usage=True)
    first = event(chunk("a"), sep)
    assert tap.feed(first[:-1]) == b""  # not ended yet: held back
    assert tap.feed(first[-1:] + b"data: {") == first  # ended: out at once, the rest held


def test_pass_through_when_the_client_asked_for_usage() -> None:
    sent, _ = stream(b"\n\n")
    for cut in range(0, len(sent) + 1, 5):
        tap = SSEUsageTap(strip_usage=False)
        assert feed_all(tap, [sent[:cut], sent[cut:]]) == sent  # untouched, usage included
        assert tap.finish() == Usage(12, 3)


def test_a_content_chunk_that_mentions_usage_is_not_stripped() -> None:
    content = event(
        {"choices": [{"delta": {"content": '"usage":{'}}], "usage": {"prompt_tokens": 1}}
    )
    tap = SSEUsageTap(strip_usage=True)
    assert feed_all(tap, [content]) == content


def test_no_usage_anywhere() -> None:
    sent = event(chunk("x")) + b"data: [DONE]\n\n"
    for strip in (True, False):
        tap = SSEUsageTap(strip_usage=strip)
        assert feed_all(tap, [sent]) == sent and tap.finish() is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (event(USAGE), Usage(12, 3)),
        (b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 1}}', Usage(2, 1)),
        (b'data: {"usage": null}', None),
        (b"data: [DONE]", None),
        (b'data: {"usage":{ not json', None),
        (b'data: {"usage":{"prompt_tokens":null}}', Usage(0, 0)),
    ],
)
def test_usage_from_event(raw: bytes, expected: Usage | None) -> None:
    assert usage_from_event(raw) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":7}}', Usage(5, 7)),
        (b'{"usage":null}', None),
        (b"[1,2]", None),
        (b"not json", None),
        # orjson refuses these; json reads them (the fallback keeps json's answers)
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":7},"logprob":NaN}', Usage(5, 7)),
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":7},"text":"\\ud800"}', Usage(5, 7)),
        ('{"usage":{"prompt_tokens":4,"completion_tokens":2}}'.encode("utf-16"), Usage(4, 2)),
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":7}} trailing', None),
        # what is not a token count counts 0: never an exception, never a counter going down
        (b'{"usage":{"prompt_tokens":"abc","completion_tokens":-5}}', Usage(0, 0)),
        (b'{"usage":{"prompt_tokens":1e400,"completion_tokens":[1]}}', Usage(0, 0)),
        (b'{"usage":{"prompt_tokens":true,"completion_tokens":{"n":1}}}', Usage(0, 0)),
        (b'{"usage":{"prompt_tokens":12.0,"completion_tokens":NaN}}', Usage(12, 0)),
    ],
)
def test_usage_from_body(body: bytes, expected: Usage | None) -> None:
    assert usage_from_body(body) == expected


@pytest.mark.parametrize("spaced", [False, True])
def test_usage_null_in_every_chunk_passes_and_only_the_usage_event_is_stripped(
    spaced: bool,
) -> None:
    """vLLM (like OpenAI) puts ``"usage":null`` in every chunk once usage is asked for."""
    dumps: dict[str, object] = {"separators": (", ", ": ")} if spaced else {}

    def ev(obj: object) -> bytes:
        return b"data: " + json.dumps(obj, **dumps).encode() + b"\n\n"  # type: ignore[arg-type]

    head = b"".join(ev({**chunk(t), "usage": None}) for t in ("Hel", "lo"))
    done = b"data: [DONE]\n\n"
    sent = head + ev(USAGE) + done
    for cut in range(len(sent)):
        tap = SSEUsageTap(strip_usage=True)
        assert feed_all(tap, [sent[:cut], sent[cut:]]) == head + done, cut
        assert tap.finish() == Usage(12, 3)


def _strip_by_splitting_everything(data: bytes) -> bytes:
    """The reference: every event split out and looked at (what the tap did before it skipped
    the events ahead of the first usage object)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    cut = max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)
    complete, rest = data[:cut], data[cut:]  # the events that ended; the rest waits
    out, start = [], 0
    for boundary in re.finditer(rb"\r\n\r\n|\n\n", complete):
        ev, start = complete[start : boundary.end()], boundary.end()
        if usage_from_event(ev) is None or b'"choices":[]' not in ev.replace(b" ", b""):
            out.append(ev)
    return b"".join(out) + rest


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\n\n\n", b"\n\r\n\r\n"])
def test_a_read_holding_a_whole_stream_is_stripped_as_by_splitting_every_event(sep: bytes) -> None:
    sent, _ = stream(sep)
    tap = SSEUsageTap(strip_usage=True)
    assert feed_all(tap, [sent]) == _strip_by_splitting_everything(sent)
    assert tap.finish() == Usage(12, 3)


@pytest.mark.parametrize("strip", [True, False])
@pytest.mark.parametrize(
    ("chunks", "complete"),
    [
        ([b'data: {"a":1}\n\n', b"data: [DONE]\n\n"], True),  # the last event alone in a read
        ([b'data: {"a":1}\n\ndata: [DONE]\n\n'], True),
        ([b"data: [DONE]\n\n"], True),
        ([b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n'], True),
        ([b'data: {"a":1}\n\n', b"data: [DO"], False),  # not whole yet
        ([b'data: {"a":1}\n\n'], False),
        ([b'data: {"content":"see data: [DONE]\n\n'], False),  # inside a text, no event
        ([b"data: [DONE]\n\n", b'data: {"a":1}\n\n'], False),  # not the last event
    ],
)
def test_the_tap_knows_when_the_terminal_event_has_passed(
    chunks: list[bytes], complete: bool, strip: bool
) -> None:
    tap = SSEUsageTap(strip)
    for chunk in chunks:
        tap.feed(chunk)
    assert tap.complete() is complete
