"""The relay: an upstream answer becomes the client's response, streamed or whole.

Ownership rule: the stream relay owns the upstream response from the moment it is handed over
and closes it in ``finally``, however the stream ends (done, backend broke off, client gone; a
closed connection is how vLLM learns to abort the request).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from quantroute.errors import (
    UpstreamFailure,
    UpstreamTimeout,
    UpstreamTooLarge,
    openai_error_body,
)
from quantroute.one_write import ONE_WRITE, OneWrite
from quantroute.proxy.attempt import CLIENT_CLOSED, Attempt
from quantroute.proxy.context import RequestContext
from quantroute.proxy.disconnect import RelayResponse
from quantroute.proxy.sse import EventCap, Usage
from quantroute.proxy.transcript import StreamBroke
from quantroute.proxy.upstream import UpstreamResponse
from quantroute.proxy.upstream_errors import client_error
from quantroute.resilience.outcomes import AttemptOutcome

log = logging.getLogger("quantroute.proxy")
NO_EXTENSIONS: Mapping[str, object] = {}


def sse_error_event(message: str) -> bytes:
    """The error event vLLM itself sends when a stream fails after it started."""
    body = openai_error_body(message, "upstream_error", code=502)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def response_headers(
    ctx: RequestContext, attempt: Attempt, retry_after: str | None = None
) -> dict[str, str]:
    headers = {"x-quantroute-backend": attempt.backend_id}
    if ctx.routed.downgraded:  # flow control sent it below the group's quality floor
        headers["x-quantroute-downgraded"] = "true"
    if ctx.show_decision:  # built only for a caller who sees it
        headers["x-quantroute-decision"] = ctx.decision_header()
    if retry_after is not None and retry_after.isascii():
        headers["retry-after"] = retry_after
    return headers


def relay_body(
    ctx: RequestContext,
    attempt: Attempt,
    status: int,
    content_type: str,
    data: bytes,
    retry_after: str | None = None,
) -> WholeResponse:
    """A whole (non-stream) answer, passed on (errors: :mod:`.upstream_errors`). The backend's
    lease is released at once; the rest of the accounting (usage, the attempt's metrics and
    passive-health report, the request's trail and callbacks) runs once the answer is sent, so
    the client does not wait for it."""
    attempt.answered()
    headers = response_headers(ctx, attempt, retry_after)
    sent_status, sent_type, sent = status, content_type, data
    if status >= 400:
        sent_status, sent_type, sent = client_error(
            status, content_type, data, backend_id=attempt.backend_id, request_id=ctx.request_id
        )
    sent = ctx.exchange.client_body(sent_status, sent)  # then in the API's own format

    def settle() -> None:
        usage = ctx.exchange.usage(data) if status == 200 else None
        attempt.finish(status, usage, retry_after=retry_after)
        ctx.done()

    response = WholeResponse(sent, sent_status, headers=headers, media_type=sent_type, after=settle)
    ctx.handed_over = True
    return response


class WholeResponse(Response):
    """A whole answer whose request is settled (``after``) once it is sent, however sending
    ends, or by :meth:`settle` if it is never sent.

    Its header block is what Starlette's ``Response`` makes of the same arguments (its rules for
    ``content-length`` and ``content-type``; a test holds the two equal), built without the
    general case's steps: ``headers`` come with lower-case names (the gateway's own), and never
    name either of those two. Sent as ``Response`` sends it, one coroutine less."""

    def __init__(
        self,
        content: bytes,
        status_code: int,
        *,
        headers: Mapping[str, str],
        media_type: str,
        after: Callable[[], None],
    ) -> None:
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.body = content
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if not (status_code < 200 or status_code in (204, 304)):
            raw.append((b"content-length", b"%d" % len(content)))
        if media_type.startswith("text/") and "charset=" not in media_type.lower():
            media_type += "; charset=" + self.charset
        raw.append((b"content-type", media_type.encode("latin-1")))
        self.raw_headers = raw
        self._after: Callable[[], None] | None = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        together: OneWrite | None = scope.get("extensions", NO_EXTENSIONS).get(ONE_WRITE)
        try:
            if together is not None:  # the gateway's server: head and body in one write
                together.hold()
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send({"type": "http.response.body", "body": self.body})
        finally:
            if together is not None:
                together.release()
            self.settle()

    def settle(self) -> None:
        """The request's accounting, once."""
        after, self._after = self._after, None
        if after is not None:
            after()


def relay_stream(
    ctx: RequestContext,
    attempt: Attempt,
    upstream: UpstreamResponse,
    first: bytes | None = None,
    max_event_bytes: int = 4 * 1024 * 1024,
) -> Response:
    """A stream: SSE bytes pass through as they arrive (the usage event the gateway asked for
    is stripped); the attempt is accounted when the stream ends, however it ends. A stream that
    breaks is continued on another backend where ``ctx.continuation`` allows it. ``first`` is
    the chunk the forwarder already read (a stream counts as answered from its first chunk); no
    event may grow past ``max_event_bytes``."""
    stream = _Stream(ctx, attempt, upstream, first, max_event_bytes)
    try:
        response = RelayResponse(
            stream,
            upstream.status,
            headers=response_headers(ctx, attempt, upstream.retry_after),
            media_type=upstream.content_type,
            on_close=stream.close,
        )
    except Exception:
        stream.close()
        raise
    ctx.handed_over = True
    return response


def _mid_stream(exc: Exception) -> str:
    """What ended a stream, in the gateway's own words: the kind of failure, never the backend
    or a library's error text (those are logged under the request id)."""
    if isinstance(exc, UpstreamTimeout):
        return "The backend sent nothing within the stream's idle timeout"
    if isinstance(exc, UpstreamTooLarge):
        return "The backend's stream was cut: an SSE event exceeds the gateway's size cap"
    return "The backend failed mid-stream"


def _stream_error_code(exc: Exception) -> str:
    """The trail's name for what ended a stream (the access log's and the span's error)."""
    if isinstance(exc, UpstreamTimeout):
        return "upstream_timeout"
    if isinstance(exc, UpstreamTooLarge):
        return "upstream_response_too_large"
    return "upstream_stream_error"


class _Stream:
    """The relayed events; :meth:`close` ends the exchange exactly once, also when the response
    is never sent (a generator that never started would never run its ``finally``)."""

    def __init__(
        self,
        ctx: RequestContext,
        attempt: Attempt,
        upstream: UpstreamResponse,
        first: bytes | None = None,
        max_event_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._exchange = ctx.exchange
        self._ctx = ctx
        self._attempt = attempt
        self._upstream = upstream
        self._first = first
        self._cap = EventCap(max_event_bytes)
        self._tap = ctx.exchange.tap(attempt.strip_usage)
        self._cont = ctx.continuation
        self._outcome = CLIENT_CLOSED
        self._failure: AttemptOutcome | None = None
        self._error: str | None = None
        self._closed = False
        self._continuing = False

    def _pass(self, chunk: bytes) -> bytes:
        """One read of the backend's stream: checked, tapped; what the client gets of it."""
        self._cap.check(chunk)
        self._attempt.first_byte()
        out = self._tap.feed(chunk)
        return out if self._cont is None else self._cont.take(out)

    def _recorded_error(self) -> bool:
        """The continuation's recorder saw the backend's own error event: the stream ends."""
        cont = self._cont
        return cont is not None and cont.recorder is not None and bool(cont.recorder.error)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # one generator per stream: the backend's reads are consumed here directly (the first
        # one, already read by the forwarder, before them), each yielded as it came (aiohttp's
        # read returns every byte that arrived, so chunks that came together go out together)
        attempt, tap, cont = self._attempt, self._tap, self._cont
        try:
            ended = False
            if self._first is not None:
                out = self._pass(self._first)
                if out:
                    yield out
                ended = self._recorded_error()
            if not ended:
                async for chunk in self._upstream.chunks():
                    out = self._pass(chunk)
                    if out:
                        yield out
                    if self._recorded_error():
                        break
            rest = tap.flush()
            if cont is not None:
                rest = cont.take(rest)
                cont.check_ended()
            if rest:
                yield rest
            self._outcome = self._upstream.status
            self.close()
            await self._exchange.completed(self._outcome)
        except (UpstreamFailure, StreamBroke) as exc:
            self._outcome, self._error = 502, _stream_error_code(exc)
            failed = exc.outcome if isinstance(exc, UpstreamFailure) else "reset"
            self._failure = AttemptOutcome(failed)
            log.warning(
                "request %s: upstream %s failed mid-stream: %s",
                self._ctx.request_id,
                attempt.backend_id,
                exc,
            )
            error = self._exchange.stream_error(
                f"{_mid_stream(exc)} (request id {self._ctx.request_id})."
            )
            if cont is None or isinstance(exc, UpstreamTooLarge):
                yield error
                return
            self._continuing = True  # the request is not over: done() waits for the end
            self.close()  # the broken backend's account ends before the continuation starts
            # closed with this generator (however it ends), so the continuation's attempt has
            # ended before done() settles the request
            async with contextlib.aclosing(
                cont.resume(attempt.backend_id, str(exc), error)
            ) as tail:
                async for out in tail:
                    yield out
        except Exception:
            self._outcome, self._error = 500, "gateway_error"
            self._failure = AttemptOutcome.GATEWAY_ERROR
            raise
        finally:
            self.close()
            self._ctx.done()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._upstream.close()
        if self._outcome == CLIENT_CLOSED and not self._continuing and self._tap.complete():
            # The terminal event was relayed and the client hung up before the backend's
            # connection reached its end: the answer was whole, no generation was cut short.
            self._outcome = self._upstream.status
        usage = self._tap.finish() if self._outcome == 200 else None
        if usage is None and self._outcome == 502 and self._cont is not None:
            usage = Usage(0, self._cont.relayed_tokens())  # what it generated before it broke
        then = "continuation" if self._continuing else None
        self._attempt.finish(
            self._outcome,
            usage,
            outcome=self._failure,
            retry_after=self._upstream.retry_after,
            error=self._error,
            then=then,
        )
        if not self._continuing:
            self._ctx.done()
