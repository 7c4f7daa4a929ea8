"""Streaming relay: SSE bytes from the backend to the client, as they arrive.

When the client did not ask for usage, the gateway asked the backend for it and strips that final
usage event here; otherwise bytes pass through untouched. Usage is read from the tail of the stream
either way, for token accounting.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from quantroute.errors import UpstreamTooLarge

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n")
"""The end of an SSE event: an empty line (vLLM frames with LF; CRLF framing is valid SSE too)."""
_USAGE_MARK = b'"usage":{'
_USAGE_MARK_SPACED = b'"usage": {'
"""The two spellings :func:`usage_from_event` recognises a usage object by."""
_TAIL_KEEP = 8192


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


def usage_from_event(event: bytes) -> Usage | None:
    """``data: {...}`` with a ``usage`` object -> Usage; anything else -> None."""
    if _USAGE_MARK not in event and _USAGE_MARK_SPACED not in event:
        return None
    payload = event.strip()
    if payload.startswith(b"data:"):
        payload = payload[5:].strip()
    return _usage(payload)


def usage_from_body(body: bytes) -> Usage | None:
    return _usage(body)


def _usage(payload: bytes) -> Usage | None:
    """The ``usage`` object of a JSON document, read by orjson (a fifth of ``json``'s time for
    a short answer); what orjson refuses and ``json`` reads (NaN, lone surrogates, other
    encodings) takes ``json``'s path."""
    value: Any
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(payload)
        except ValueError:
            return None
    usage = value.get("usage") if isinstance(value, dict) else None
    if not isinstance(usage, dict):
        return None
    return Usage(_tokens(usage.get("prompt_tokens")), _tokens(usage.get("completion_tokens")))


def _tokens(value: object) -> int:
    """A token count as the backend reported it; 0 for what is not one (a string, a list, a
    negative or non-finite number): counters only go up, and a backend's odd answer is
    relayed as it is, not turned into an error."""
    if type(value) is int:  # the usual case; bool is not a count
        return value if value >= 0 else 0
    if isinstance(value, float) and 0.0 <= value < 1e18:  # NaN and inf fail the comparison
        return int(value)
    return 0


class SSEUsageTap:
    """Feed raw stream bytes; get back what the client should see; ``usage`` when known."""

    def __init__(self, strip_usage: bool) -> None:
        self._strip = strip_usage
        self._pending = b""
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self.usage: Usage | None = None
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._strip:
            # the last chunks are kept (about _TAIL_KEEP bytes), not copied per chunk: usage is
            # only looked for in the tail, once, when the stream ends
            tail = self._tail
            tail.append(chunk)
            self._tail_len += len(chunk)
            while self._tail_len - len(tail[0]) >= _TAIL_KEEP:
                self._tail_len -= len(tail.popleft())
            return chunk
        data = self._pending + chunk
        cut = _last_boundary_end(data)
        if cut < 0:
            self._pending = data
            return b""
        complete, self._pending = data[:cut], data[cut:]
        self._done = _ends_done(complete)  # the last whole event read so far
        if _USAGE_MARK not in complete and _USAGE_MARK_SPACED not in complete:
            # no usage object (vLLM puts "usage":null in every chunk once usage is asked for):
            # no event here can be the usage event, nothing to split
            return complete
        # the events before the first usage object pass whole (a read may hold a whole
        # stream's events when the gateway is busy): only the rest is split and looked at
        first = min(
            i for i in (complete.find(_USAGE_MARK), complete.find(_USAGE_MARK_SPACED)) if i >= 0
        )
        head = complete[:first]
        # where finditer from 0 would have cut: unambiguous for plain LF framing (vLLM's)
        plain = b"\r" not in head and b"\n\n\n" not in head
        cut = head.rfind(b"\n\n") if plain else -1
        start = cut + 2 if cut >= 0 else 0
        kept = [complete[:start]]
        for boundary in _BOUNDARY.finditer(complete, start):
            event, start = complete[start : boundary.end()], boundary.end()
            usage = usage_from_event(event)
            if usage is not None and b'"choices":[]' in event.replace(b" ", b""):
                self.usage = usage
                continue
            kept.append(event)
        return b"".join(kept)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def complete(self) -> bool:
        if self._strip:
            return self._done
        return _ends_done(b"".join(self._tail)[-_DONE_WINDOW:])

    def finish(self) -> Usage | None:
        if self.usage is None and self._tail:
            tail = b"".join(self._tail)[-_TAIL_KEEP:]
            for event in reversed(_BOUNDARY.split(tail)):
                usage = usage_from_event(event)
                if usage is not None:
                    self.usage = usage
                    break
        return self.usage


_DONE_WINDOW = 32
"""The terminal ``data: [DONE]`` event and its blank line fit in the stream's last bytes."""
_DONE_EVENTS = (b"data: [DONE]\n\n", b"data:[DONE]\n\n", b"data: [DONE]\r\n\r\n")


def _ends_done(data: bytes) -> bool:
    """Whether ``data`` ends with the stream's terminal event, as an event of its own (at the
    start of ``data`` or after a line break; a ``[DONE]`` inside a text is JSON-quoted)."""
    for event in _DONE_EVENTS:
        if data.endswith(event):
            before = len(data) - len(event)
            return before == 0 or data[before - 1] == 0x0A
    return False


def _last_boundary_end(data: bytes) -> int:
    """Where the last complete event in ``data`` ends, or -1 if none has ended yet."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)


class EventCap:
    """Bounds the SSE event a relay may hold: bytes since the last event boundary, counted as
    chunks pass, whatever tap reads them. A backend streaming one endless event (no blank line)
    raises :class:`~quantroute.errors.UpstreamTooLarge` at ``max_bytes`` instead of growing a
    buffer without end."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._open = 0
        self._last = b""

    def check(self, chunk: bytes) -> None:
        joined = self._last + chunk  # a boundary may straddle two chunks
        cut = _last_boundary_end(joined)
        self._open = self._open + len(chunk) if cut < 0 else len(joined) - cut
        self._last = joined[-3:]
        if self._open > self._max:
            raise UpstreamTooLarge(f"an SSE event exceeds the {self._max}-byte cap")
