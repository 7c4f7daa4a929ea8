"""Reading Responses and Messages streams as they are relayed: usage, and the final response.

Both taps have the relay's tap interface (``feed`` returns what the client should see,
``flush`` the rest, ``finish`` the usage). They cut the byte stream into SSE frames and parse
only the few frames they need (a delta frame is passed on without being parsed):

- :class:`ResponsesTap` reads ``response.completed`` (or ``response.incomplete`` /
  ``response.failed``): its ``response.usage`` (``input_tokens``, ``output_tokens``) and the
  whole final response, which the gateway stores for ``previous_response_id``. When the gateway
  resolved the conversation itself it restores ``previous_response_id`` in the frames that
  carry the response object, so the client sees what one vLLM with its store enabled sends.
- :class:`MessagesTap` reads ``message_start`` (``message.usage.input_tokens``) and the last
  ``message_delta`` (``usage.output_tokens``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from quantroute.proxy.sse import Usage

_FRAME_END = re.compile(rb"\r?\n\r?\n")
_RESPONSE_ENVELOPES = (b"response.created", b"response.in_progress", b"response.completed",
                       b"response.incomplete", b"response.failed")  # fmt: skip
_FINAL = (b"response.completed", b"response.incomplete", b"response.failed")


def frame_event(frame: bytes) -> bytes:
    """The frame's ``event:`` name (b"" when it has none)."""
    if frame.startswith(b"event:"):
        end = frame.find(b"\n")
        return frame[6 : end if end >= 0 else None].strip()
    return b""


def frame_data(frame: bytes) -> Any:
    """The JSON of the frame's ``data:`` line, or None."""
    for line in frame.splitlines():
        if line.startswith(b"data:"):
            try:
                return json.loads(line[5:])
            except ValueError:
                return None
    return None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def responses_usage(response: Mapping[str, Any]) -> Usage | None:
    usage = response.get("usage")
    if not isinstance(usage, Mapping):
        return None
    return Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))


class _Frames:
    """Complete SSE frames out of a byte stream, each with its terminator."""

    def __init__(self) -> None:
        self._pending = b""

    def split(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk
        frames: list[bytes] = []
        start = 0
        for match in _FRAME_END.finditer(data):
            frames.append(data[start : match.end()])
            start = match.end()
        self._pending = data[start:]
        return frames

    def rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


class ResponsesTap:
    def __init__(self, restore: Mapping[str, Any] | None = None) -> None:
        self._frames = _Frames()
        self._restore = dict(restore or {})
        self.final: dict[str, Any] | None = None
        """The response object of the last ``response.completed`` frame, when one was seen."""

    def _frame(self, frame: bytes) -> bytes:
        kind = frame_event(frame)
        if kind not in _RESPONSE_ENVELOPES:
            return frame
        if kind not in _FINAL and not self._restore:
            return frame
        event = frame_data(frame)
        response = event.get("response") if isinstance(event, dict) else None
        if not isinstance(response, dict):
            return frame
        if kind in _FINAL:
            self.final = response
        if not self._restore:
            return frame
        response.update(self._restore)
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        return b"event: " + kind + b"\ndata: " + data + b"\n\n"

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._frame(f) for f in self._frames.split(chunk))

    def flush(self) -> bytes:
        return self._frames.rest()

    def finish(self) -> Usage | None:
        return None if self.final is None else responses_usage(self.final)

    def complete(self) -> bool:
        return self.final is not None


class MessagesTap:
    def __init__(self) -> None:
        self._frames = _Frames()
        self._input = 0
        self._output: int | None = None
        self._stopped = False

    def _read(self, frame: bytes) -> None:
        kind = frame_event(frame)
        if kind == b"message_stop":
            self._stopped = True
        if kind not in (b"message_start", b"message_delta"):
            return
        event = frame_data(frame)
        if not isinstance(event, dict):
            return
        holder = event.get("message") if kind == b"message_start" else event
        usage = holder.get("usage") if isinstance(holder, dict) else None
        if not isinstance(usage, dict):
            return
        if "input_tokens" in usage:
            self._input = max(self._input, _int(usage["input_tokens"]))
        if kind == b"message_delta" and "output_tokens" in usage:
            self._output = _int(usage["output_tokens"])

    def feed(self, chunk: bytes) -> bytes:
        for frame in self._frames.split(chunk):
            self._read(frame)
        return chunk

    def flush(self) -> bytes:
        self._frames.rest()
        return b""

    def finish(self) -> Usage | None:
        return None if self._output is None else Usage(self._input, self._output)

    def complete(self) -> bool:
        return self._stopped


def messages_usage(body: Mapping[str, Any]) -> Usage | None:
    """Usage of a non-streamed Anthropic message."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    return Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))
