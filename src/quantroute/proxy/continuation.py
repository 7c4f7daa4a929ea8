"""Streams that survive a backend failure: the generation continues on another backend.

When an upstream stream breaks before its final chunk (the connection reset or closed, the gap
between two chunks over the upstream read timeout, or an error event from the backend), the relay
hands over to :meth:`StreamContinuation.resume`. It reads what the client already received (see
:mod:`quantroute.proxy.transcript`) and sends a *continuation* to the next-best backend:

- chat: the original messages plus the text so far as a final assistant message, with
  ``continue_final_message: true`` and ``add_generation_prompt: false`` (vLLM's chat request
  fields; vLLM rejects the pair with ``add_generation_prompt`` left at its default ``true``);
- completions: the prompt with the text so far appended;
- ``max_tokens`` (or ``max_completion_tokens``) and ``min_tokens`` reduced by the tokens already
  produced, counted as content chunks relayed (vLLM streams one token per chunk by default).

The backend is chosen by a fresh routing decision for the longer prompt, within the requested
group: replicas of the variant that broke first, other variants only where the group sets
``continue_across_variants``. Requests a continuation cannot serve faithfully end with the error
event as before: ``n`` > 1 or ``best_of``, ``logprobs``, a ``seed`` (the client relies on one
sampling run), completions with ``echo`` or token-id / batched prompts, structured output
(``response_format`` json, guided decoding) once part of it was emitted, a tool call in progress.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.model import Decision, Outcome, RequestFeatures
from quantroute.errors import UpstreamFailure
from quantroute.proxy.attempt import CLIENT_CLOSED, Attempt
from quantroute.proxy.context import RequestContext
from quantroute.proxy.parse import ParsedRequest
from quantroute.proxy.sse import Usage
from quantroute.proxy.transcript import (
    DONE_EVENT,
    Recorder,
    Splicer,
    Transcript,
    read_transcript,
    sse,
)

if TYPE_CHECKING:
    from quantroute.proxy.forward import Forwarder

log = logging.getLogger("quantroute.decisions")
_STRUCTURED = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
)


def static_refusal(parsed: ParsedRequest) -> str | None:
    """Why a stream could never be continued faithfully, from the request alone (None: it can)."""
    body = parsed.body
    if body.get("n") not in (None, 1) or body.get("best_of") not in (None, 1):
        return "n > 1"
    if body.get("seed") is not None:
        return "seed"
    if parsed.kind == "chat":
        if body.get("logprobs") or body.get("top_logprobs") is not None:
            return "logprobs"
        return None
    if body.get("logprobs") is not None:
        return "logprobs"
    if body.get("echo"):
        return "echo"
    if not isinstance(body.get("prompt"), str):
        return "token-id or batched prompt"
    return None


def dynamic_refusal(parsed: ParsedRequest, t: Transcript) -> str | None:
    """Why this broken stream cannot be continued faithfully, given what was relayed."""
    if t.tool_calls:
        return "tool call in progress"
    if t.logprobs:
        return "logprobs"
    fmt = parsed.body.get("response_format")
    structured = (
        isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")
    ) or any(parsed.body.get(k) is not None for k in _STRUCTURED)
    if structured and t.text:
        return "structured output half emitted"
    return None


def remaining_tokens(parsed: ParsedRequest, t: Transcript) -> int | None:
    """The output tokens the continuation may still produce (None: the request set no limit)."""
    limit = parsed.features.max_tokens
    return None if limit is None else limit - t.tokens


def continuation_body(
    parsed: ParsedRequest, t: Transcript, served_model_name: str
) -> tuple[dict[str, Any], int]:
    """The continuation's request body, and how many tokens of its prompt are the prefix."""
    body = dict(parsed.body)
    body["model"] = served_model_name
    body["stream"] = True
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    for name in ("max_completion_tokens", "max_tokens", "min_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            body[name] = max(0 if name == "min_tokens" else 1, value - t.tokens)
    text = t.text
    if not text:
        return body, 0  # nothing relayed yet: the same request, from the start
    if parsed.kind == "completion":
        body["prompt"] = body["prompt"] + text
        return body, t.tokens
    messages = list(body["messages"])
    last = messages[-1]
    if (
        body.get("continue_final_message")
        and last.get("role") == "assistant"
        and isinstance(last.get("content"), str)
    ):
        messages[-1] = {**last, "content": last["content"] + text}  # the client's own prefill
    else:
        messages.append({"role": "assistant", "content": text})
    body["messages"] = messages
    body["continue_final_message"] = True
    body["add_generation_prompt"] = False
    return body, t.tokens


class Continuer:
    """Gateway-wide: decides which streams may be continued and where; one per gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        forwarder: Forwarder,
        decide: Callable[[RequestFeatures], Decision],
    ) -> None:
        self.config = config
        self.forwarder = forwarder
        self.decide = decide
        self._across = {g.name: g.continue_across_variants for g in config.groups}

    def watch(self, ctx: RequestContext) -> StreamContinuation | None:
        """The continuation guard for a stream (None: continuation is off)."""
        settings = self.config.continuation
        if not (settings.enabled and settings.max_per_request and ctx.features.stream):
            return None
        if ctx.parsed.kind not in ("chat", "completion"):
            return None  # other APIs' streams end with their error event as before
        return StreamContinuation(self, ctx, static_refusal(ctx.parsed))

    @property
    def backends(self) -> Mapping[str, BackendConfig]:
        return self.forwarder.backends

    def candidates(self, ctx: RequestContext, t: Transcript, source: str) -> list[BackendConfig]:
        """Backends that may continue, best first: a fresh decision for the longer prompt, the
        broken backend's variant first, other variants only where the group allows them."""
        f = ctx.features
        remaining = remaining_tokens(ctx.parsed, t)
        features = replace(f, prompt_tokens=f.prompt_tokens + t.tokens, max_tokens=remaining)
        decision = self.decide(features)
        if decision.outcome is not Outcome.ROUTED:
            return []
        tried = {a.backend_id for a in ctx.attempts}
        backends = self.backends
        variant = backends[source].variant_id if source in backends else None
        ranked = [backends[b] for b in decision.ranked if b in backends and b not in tried]
        same = [b for b in ranked if b.variant_id == variant]
        across = self._across.get(ctx.routed.group or "", False)
        return same + ([b for b in ranked if b.variant_id != variant] if across else [])

    def count(self, source: str, target: str, outcome: str, reason: str, tokens: int) -> None:
        self.forwarder.telemetry.continuations.labels(source, target, outcome).inc()
        log.info(
            "continuation from=%s to=%s outcome=%s trigger=%r relayed_tokens=%d",
            source, target, outcome, reason, tokens,
        )  # fmt: skip


class StreamContinuation:
    """Per stream: records what was relayed; on a break, continues it elsewhere."""

    def __init__(self, continuer: Continuer, ctx: RequestContext, refusal: str | None) -> None:
        self._continuer = continuer
        self._ctx = ctx
        self._refusal = refusal
        limit = continuer.config.continuation.max_prefix_bytes
        self.recorder = Recorder(limit) if refusal is None else None

    def take(self, data: bytes) -> bytes:
        """What of ``data`` to relay now (whole events, once recording)."""
        return self.recorder.take(data) if self.recorder is not None else data

    def check_ended(self) -> None:
        """Raise :class:`~quantroute.proxy.transcript.StreamBroke` if the stream ended early."""
        if self.recorder is not None:
            self.recorder.check_ended()

    def relayed_tokens(self) -> int:
        return read_transcript(self.recorder.relayed()).tokens if self.recorder else 0

    async def resume(self, failed: str, reason: str, fallback: bytes) -> AsyncGenerator[bytes]:
        """The rest of the client's stream after ``failed`` broke off; ``fallback`` (the error
        event) when it cannot be continued."""
        c, ctx, recorder = self._continuer, self._ctx, self.recorder
        if recorder is None or recorder.overflow:
            why = self._refusal or "prefix over continuation.max_prefix_bytes"
            c.count(failed, "none", "not_faithful", f"{reason}; {why}", 0)
            yield fallback
            return
        source = failed
        used, allowed = 0, c.config.continuation.max_per_request
        # A backend that refuses the continuation before sending anything (a connect error, a
        # 5xx or 429 answer) did no work: the next candidate is tried without using one up, as
        # a retry would be. Bounded by the candidates: every try excludes the backend it tried.
        for _ in range(allowed + len(c.backends)):
            if used == allowed:
                break
            t = read_transcript(recorder.relayed())
            refusal = dynamic_refusal(ctx.parsed, t)
            if refusal is not None:
                c.count(source, "none", "not_faithful", f"{reason}; {refusal}", t.tokens)
                yield fallback
                return
            remaining = remaining_tokens(ctx.parsed, t)
            if t.finish_reason is not None or (remaining is not None and remaining < 1):
                c.count(source, "none", "ended_locally", reason, t.tokens)
                for event in self._end_locally(t):
                    yield event
                return
            candidates = c.candidates(ctx, t, source)
            if not candidates:
                c.count(source, "none", "no_backend", reason, t.tokens)
                yield fallback
                return
            target = candidates[0]
            run = _Run(c, ctx, target, t)
            async with contextlib.aclosing(run.events()) as events:  # its attempt ends with us
                async for out in events:
                    if not out.startswith(b":"):
                        recorder.take(out)
                    yield out
            c.count(source, target.id, run.outcome, reason, t.tokens)
            if run.outcome == "completed":
                return
            used += run.began
            if run.began:
                source, reason = target.id, run.failure or "failed"
        yield fallback

    def _end_locally(self, t: Transcript) -> list[bytes]:
        """The stream's end when the generation was already over (finish or limit reached)."""
        head: dict[str, Any] = {
            k: t.head[k] for k in ("id", "object", "created", "model") if k in t.head
        }
        events: list[bytes] = []
        if t.finish_reason is None:
            chat = self._ctx.parsed.kind == "chat"
            piece: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
            choice: dict[str, Any] = {
                "index": 0,
                **piece,
                "logprobs": None,
                "finish_reason": "length",
            }
            events.append(sse({**head, "choices": [choice]}))
        if self._ctx.parsed.wants_usage and not t.usage_sent:
            prompt = self._ctx.features.prompt_tokens  # the gateway's estimate: none was relayed
            usage = {"prompt_tokens": prompt, "total_tokens": prompt + t.tokens,
                     "completion_tokens": t.tokens}  # fmt: skip
            events.append(sse({**head, "choices": [], "usage": usage}))
        return [*events, DONE_EVENT]


class _Run:
    """One continuation attempt at one backend; its outcome is set when :meth:`events` ends."""

    def __init__(
        self, c: Continuer, ctx: RequestContext, backend: BackendConfig, t: Transcript
    ) -> None:
        self._c = c
        self._ctx = ctx
        self._backend = backend
        body, prefix_tokens = continuation_body(ctx.parsed, t, backend.served_model_name)
        self._body = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        self._splicer = Splicer(t, prefix_tokens, ctx.parsed.wants_usage)
        self.outcome = "client_closed"
        self.failure: str | None = None
        self.began = False
        """The backend answered 200 and the continuation's bytes began (it did work)."""

    async def events(self) -> AsyncGenerator[bytes]:
        fw, ctx, splicer = self._c.forwarder, self._ctx, self._splicer
        attempt = fw.begin_attempt(ctx, self._backend, strip_usage=not ctx.parsed.wants_usage)
        status = CLIENT_CLOSED
        try:
            headers = attempt.trail.headers(ctx.upstream_headers(self._backend.id))
            response = await fw.upstream.post(
                fw.url_for(self._backend, ctx),
                self._body,
                headers,
                fw.deadlines_for(self._backend, ctx),
            )
            try:
                if response.status != 200:
                    status, self.outcome = response.status, "failed"
                    self.failure = f"continuation answered HTTP {response.status}"
                    return
                attempt.first_byte()
                self.began = True
                yield f": quantroute continued on {self._backend.id}\n\n".encode()
                async for chunk in response.chunks():
                    out = splicer.feed(chunk)
                    if out:
                        yield out
                    if splicer.error is not None:
                        break
                status = self._settle(attempt)
                if status == 200:
                    yield DONE_EVENT
            finally:
                response.close()
        except UpstreamFailure as exc:
            status, self.outcome, self.failure = 502, "failed", str(exc)
        finally:
            usage = splicer.raw_usage
            counted = Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"])) if (
                usage and status == 200
            ) else None  # fmt: skip
            attempt.finish(status, counted)

    def _settle(self, attempt: Attempt) -> int:
        splicer = self._splicer
        if splicer.error is not None:
            self.outcome, self.failure = "failed", f"error event: {splicer.error}"
            return 502
        if not splicer.done:
            self.outcome, self.failure = "failed", "the stream closed before its final chunk"
            return 502
        self.outcome = "completed"
        return 200
