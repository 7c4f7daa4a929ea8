"""What differs between the client APIs on the forwarding path, behind one small interface.

The forwarder and the relay are the same for every API; an :class:`Exchange` tells them the
upstream path, the body for a given backend, how to read a stream (the tap) and a whole body
(usage), how the client should see a whole body, and what to do once the answer is complete.
:class:`OpenAIExchange` is chat and completions; the Responses API, Anthropic Messages and the
pooling APIs have theirs in :mod:`quantroute.apis.exchanges`.
"""

from __future__ import annotations

from typing import Protocol

from quantroute.proxy.parse import ParsedRequest, upstream_body
from quantroute.proxy.relay import sse_error_event
from quantroute.proxy.sse import SSEUsageTap, Usage, usage_from_body

PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


class Tap(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """What the client should see of these stream bytes."""
        ...

    def flush(self) -> bytes: ...

    def finish(self) -> Usage | None:
        """Token usage, once the stream is over (None when it never said)."""
        ...

    def complete(self) -> bool:
        """Whether the stream's terminal event has passed (``[DONE]``, ``response.completed``,
        ``message_stop``): the answer is whole, whatever happens to the connection next."""
        ...


class Exchange(Protocol):
    path: str

    def body_for(self, served_model_name: str) -> tuple[bytes, bool]:
        """The body for a backend serving ``served_model_name``; True when the gateway asked for
        a usage event the client did not (the tap strips it)."""
        ...

    def tap(self, strip_usage: bool) -> Tap: ...

    def usage(self, data: bytes) -> Usage | None:
        """Token usage of a whole (non-stream) answer."""
        ...

    def client_body(self, status: int, data: bytes) -> bytes:
        """A whole answer as the client should see it."""
        ...

    def stream_error(self, message: str) -> bytes:
        """The event that ends a stream the backend broke off, in the API's own format."""
        ...

    async def completed(self, status: int) -> None:
        """The whole answer went out (streamed or not) with ``status``."""
        ...


class OpenAIExchange:
    """Chat completions and completions: bytes pass through; usage asked for when needed."""

    def __init__(self, parsed: ParsedRequest) -> None:
        self.parsed = parsed
        self.path = PATHS[parsed.kind]

    def body_for(self, served_model_name: str) -> tuple[bytes, bool]:
        return upstream_body(self.parsed, served_model_name)

    def tap(self, strip_usage: bool) -> Tap:
        return SSEUsageTap(strip_usage)

    def usage(self, data: bytes) -> Usage | None:
        return usage_from_body(data)

    def client_body(self, status: int, data: bytes) -> bytes:
        return data

    def stream_error(self, message: str) -> bytes:
        return sse_error_event(message)

    async def completed(self, status: int) -> None:
        return None
