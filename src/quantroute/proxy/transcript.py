"""What a client has received of a stream, and how a continuation's events are made to fit it.

Pure and synchronous. :class:`Recorder` sits in the stream relay of every stream that may be
continued: it passes on whole SSE events only (a partial event is held back until it ends, so a
stream that breaks never leaves the client with half an event) and keeps the bytes it passed on.
Nothing is parsed on the happy path; only when a stream breaks does :func:`read_transcript` parse
the kept events into a :class:`Transcript`: the text so far, the ids the client saw, how many
tokens were produced (one per content chunk, vLLM's default streaming), and whether anything
makes a continuation unfaithful (a tool call in progress, logprobs).

:class:`Splicer` rewrites the continuation's events so the client sees one stream: the role
chunk it already had is dropped, ``id``, ``created``, ``model`` and ``system_fingerprint`` are
the values it already saw, and the usage counts everything generated for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from quantroute.proxy.sse import _BOUNDARY, _last_boundary_end

DONE_EVENT = b"data: [DONE]\n\n"
_ERROR_MARK = b'{"error"'
_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint")

JsonObject = dict[str, Any]


class StreamBroke(Exception):
    """The upstream stream ended without its final chunk, or with an error event."""


class Recorder:
    """Relays whole events and keeps them; notices an error event and a missing ``[DONE]``."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._pending = b""
        self._kept: list[bytes] = []
        self._size = 0
        self.overflow = False
        """More than ``limit_bytes`` were relayed: too much to replay as a prefix."""
        self.done = False
        self.error: str | None = None
        """The message of an error event the backend sent (not relayed)."""

    def take(self, data: bytes) -> bytes:
        """The whole events in ``pending + data`` to relay now (an error event is kept back)."""
        if not data:
            return b""
        data = self._pending + data
        cut = _last_boundary_end(data)
        if cut < 0:
            self._pending = data
            return b""
        complete, self._pending = data[:cut], data[cut:]
        if _ERROR_MARK in complete:
            complete = self._before_error(complete)
        if b"[DONE]" in complete:
            self.done = True
        self._size += len(complete)
        if self._size > self._limit:
            self.overflow = True
            self._kept.clear()
        elif complete:
            self._kept.append(complete)
        return complete

    def _before_error(self, complete: bytes) -> bytes:
        kept, start = [], 0
        for boundary in _BOUNDARY.finditer(complete):
            event, start = complete[start : boundary.end()], boundary.end()
            payload = _payload(event)
            if payload is not None and payload.startswith(_ERROR_MARK):
                error = _json(payload).get("error")
                self.error = str(error.get("message")) if isinstance(error, dict) else "error"
                break
            kept.append(event)
        return b"".join(kept)

    def check_ended(self) -> None:
        """The upstream body ended: raise :class:`StreamBroke` unless it ended properly."""
        if self.error is not None:
            raise StreamBroke(f"error event: {self.error}")
        if not self.done:
            raise StreamBroke("the stream closed before its final chunk")

    def relayed(self) -> bytes:
        return b"".join(self._kept)


@dataclass
class Transcript:
    """What the client received, read from the relayed events."""

    head: JsonObject = field(default_factory=dict)
    """``id``, ``object``, ``created``, ``model``, ``system_fingerprint`` as the client saw them."""
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    """Content chunks relayed: one token each in vLLM's default streaming (stream_interval 1)."""
    role_sent: bool = False
    finish_reason: str | None = None
    usage_sent: bool = False
    tool_calls: bool = False
    logprobs: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


def read_transcript(relayed: bytes) -> Transcript:
    """Parse the relayed events (single choice: ``n`` > 1 is never continued)."""
    t = Transcript()
    for event in iter_events(relayed):
        for name in ("id", "object", "created", "model", "system_fingerprint"):
            if event.get(name) is not None:
                t.head.setdefault(name, event[name])
        if event.get("usage") and not event.get("choices"):
            t.usage_sent = True
        for choice in event.get("choices") or ():
            _read_choice(t, choice)
    return t


def _read_choice(t: Transcript, choice: JsonObject) -> None:
    delta = choice.get("delta")
    piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    if isinstance(delta, dict):
        t.role_sent = t.role_sent or "role" in delta
        t.tool_calls = t.tool_calls or bool(delta.get("tool_calls"))
    if isinstance(piece, str) and piece:
        t.parts.append(piece)
        t.tokens += 1
    if choice.get("logprobs"):
        t.logprobs = True
    if choice.get("finish_reason") is not None:
        t.finish_reason = choice["finish_reason"]


def iter_events(data: bytes) -> Iterator[JsonObject]:
    """The JSON objects of ``data: {...}`` events (comments, ``[DONE]`` and junk skipped)."""
    start = 0
    for boundary in _BOUNDARY.finditer(data):
        event, start = data[start : boundary.end()], boundary.end()
        payload = _payload(event)
        if payload is not None and payload.startswith(b"{"):
            yield _json(payload)


def _payload(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _json(payload: bytes) -> JsonObject:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def sse(value: object) -> bytes:
    """One event, serialised compactly with non-ASCII kept, as vLLM writes its chunks."""
    return (
        b"data: " + json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
    )


@dataclass
class Splicer:
    """Rewrites a continuation's events to continue the client's stream."""

    transcript: Transcript
    prefix_tokens: int
    """Tokens of the text the continuation was given as its prefix (0: it started afresh)."""
    forward_usage: bool
    """The client asked for usage (else the usage chunk is read and dropped)."""
    raw_usage: JsonObject | None = None
    """The continuation backend's own usage (its prompt includes the prefix)."""
    usage: JsonObject | None = None
    """The spliced usage: completion tokens of both backends, prompt tokens of the original."""
    finished: bool = False
    error: str | None = None
    done: bool = False
    _pending: bytes = b""

    def feed(self, data: bytes) -> bytes:
        """Whole rewritten events of ``data`` (``[DONE]`` held back: :meth:`close` sends it)."""
        data = self._pending + data
        cut = _last_boundary_end(data)
        if cut < 0:
            self._pending = data
            return b""
        complete, self._pending = data[:cut], data[cut:]
        out = []
        start = 0
        for boundary in _BOUNDARY.finditer(complete):
            event, start = complete[start : boundary.end()], boundary.end()
            rewritten = self._event(event)
            if rewritten:
                out.append(rewritten)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        payload = _payload(event)
        if payload is None:
            return b""
        if payload == b"[DONE]":
            self.done = True
            return b""
        value = _json(payload)
        if "error" in value:
            error = value["error"]
            self.error = str(error.get("message")) if isinstance(error, dict) else "error"
            return b""  # the continuation's failure: the caller decides what the client gets
        for name in _HEAD_FIELDS:
            if name in value and name in self.transcript.head:
                value[name] = self.transcript.head[name]
        choices = value.get("choices") or []
        if not choices and isinstance(value.get("usage"), dict):
            self.raw_usage = value["usage"]
            self.usage = value["usage"] = self._usage(value["usage"])
            return sse(value) if self.forward_usage else b""
        for choice in choices:
            delta = choice.get("delta")
            if isinstance(delta, dict) and "role" in delta and self.transcript.role_sent:
                del delta["role"]
                if not delta.get("content") and choice.get("finish_reason") is None:
                    return b""
            if choice.get("finish_reason") is not None:
                self.finished = True
        return sse(value)

    def _usage(self, usage: JsonObject) -> JsonObject:
        before = self.transcript.tokens
        prompt = max(0, int(usage.get("prompt_tokens") or 0) - self.prefix_tokens)
        completion = before + int(usage.get("completion_tokens") or 0)
        return {
            **usage,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
