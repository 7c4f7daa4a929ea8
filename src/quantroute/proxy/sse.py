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

from quantroute.errors import UpstreamTooLarge

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n")
"""The end of an SSE event: an empty line (vLLM frames with LF; CRLF framing is valid SSE too)."""
_USAGE_MARK = b'"usage":{'
_TAIL_KEEP = 8192


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


def usage_from_event(event: bytes) -> Usage | None:
    """``data: {...}`` with a ``usage`` object -> Usage; anything else -> None."""
    if _USAGE_MARK not in event.replace(b'": {', b'":{'):
        return None
    payload = event.strip()
    if payload.startswith(b"data:"):
        payload = payload[5:].strip()
    try:
        usage = json.loads(payload).get("usage")
    except (ValueError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def usage_from_body(body: bytes) -> Usage | None:
    try:
        usage = json.loads(body).get("usage")
    except (ValueError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


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
        if _DONE.search(complete):
            self._done = True
        if b'"usage"' not in complete:
            return complete
        kept = []
        start = 0
        for boundary in _BOUNDARY.finditer(complete):
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
        return _DONE.search(b"".join(self._tail)[-_DONE_WINDOW:]) is not None

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
_DONE = re.compile(rb"(?:^|\n)data: ?\[DONE\]\r?\n\r?\n\Z")
"""The stream's terminal event, as the last bytes (``[DONE]`` inside a text is JSON)."""


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
