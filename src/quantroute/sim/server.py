"""The OpenAI-compatible HTTP app of one simulated vLLM backend.

Routes of a generative backend (vLLM's default runner): POST /v1/chat/completions and
/v1/completions (stream and non-stream), /v1/responses (:mod:`api_responses`) and
/v1/messages (:mod:`api_messages`); of a pooling backend (``--runner pooling``, an
embedding model): /v1/embeddings, /v1/score and /v1/rerank (:mod:`api_pooling`). Both:
GET /v1/models, /health and /metrics. Requests are checked in vLLM's order (body, model
name, prompt length, max_tokens) and rejected with vLLM's error bodies. A client that goes
away aborts its request in the engine, streaming or not.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from quantroute.sim import api_messages, api_pooling, api_responses, wire
from quantroute.sim.backend import Job, SimBackend
from quantroute.sim.exchange import Rejected, aborted, check_model, check_prompt, collect, parse
from quantroute.sim.faults import StreamFault, strike
from quantroute.sim.metrics import CONTENT_TYPE
from quantroute.sim.text import (
    chat_prompt_pieces,
    chat_prompt_tokens,
    completion_prompt_pieces,
    completion_prompt_tokens,
    continued_chat_prompt_pieces,
    continued_chat_prompt_tokens,
)


def _check(
    backend: SimBackend,
    body: wire.ChatRequest | wire.CompletionRequest,
    chars: int,
    prompt_tokens: int,
) -> None:
    limit = backend.identity.max_model_len
    check_model(backend, body.model)
    check_prompt(backend, chars, prompt_tokens)
    if body.output_limit is not None and body.output_limit > limit:
        raise Rejected(400, wire.max_tokens_too_large(body.output_limit, limit))


@dataclass(frozen=True)
class _Kind:
    """What differs between chat completions and completions on the wire."""

    id_prefix: str
    chunk_object: str
    role_chunk: bool
    content_chunk: Callable[[str, int, str, str, str | None], wire.JsonObject]
    full: Callable[[str, int, str, str, str, wire.JsonObject], wire.JsonObject]


CHAT = _Kind(
    "chatcmpl", "chat.completion.chunk", True, wire.chat_content_chunk, wire.chat_completion
)
COMPLETION = _Kind("cmpl", "text_completion", False, wire.completion_chunk, wire.completion)


@dataclass(frozen=True)
class _Call:
    """One accepted request: its ids, kind and what the engine needs."""

    kind: _Kind
    rid: str
    created: int
    model: str
    prompt_tokens: int
    max_tokens: int | None
    prompt_text: str
    include_usage: bool
    ignore_eos: bool
    min_tokens: int
    prompt_pieces: list[str]
    prompt_tokens_details: bool
    prefix: str = ""

    def submit(self, backend: SimBackend) -> Job:
        return backend.submit(
            self.prompt_tokens,
            self.max_tokens,
            self.prompt_text,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            prefix=self.prefix,
            prompt_pieces=self.prompt_pieces,
        )

    def cached_tokens(self, job: Job) -> int:
        return job.cached_tokens if self.prompt_tokens_details else 0

    def usage_chunk(self, job: Job) -> wire.JsonObject:
        use = wire.usage(job.prompt_tokens, job.output_tokens, self.cached_tokens(job))
        return wire.usage_chunk(self.rid, self.created, self.model, self.kind.chunk_object, use)


async def _stream(backend: SimBackend, call: _Call) -> AsyncIterator[str]:
    """SSE framing as vLLM's: [role chunk], content chunks (the last with its finish
    reason), [usage chunk], [DONE]. Closing the generator aborts the request. An armed
    fault (:mod:`quantroute.sim.faults`) breaks the stream after that many content chunks."""
    job = call.submit(backend)
    head = (call.rid, call.created, call.model)
    fault = backend.faults.take()
    try:
        async for event in job.events():
            if call.kind.role_chunk and event.index == 0:
                yield wire.sse(wire.chat_role_chunk(*head))
            if fault is not None and event.index == fault.after_content_chunks:
                for rest in await strike(fault):
                    yield rest
                return
            piece = job.piece(event.index)
            yield wire.sse(call.kind.content_chunk(*head, piece, event.finish_reason))
        if not job.finished:
            return  # the backend shut down
        if call.include_usage:
            yield wire.sse(call.usage_chunk(job))
        yield wire.SSE_DONE
    finally:
        backend.abort(job.request_id)


async def _respond(backend: SimBackend, call: _Call, request: Request) -> Response:
    job = call.submit(backend)
    text = await collect(backend, job, request)
    if text is None or job.finish_reason is None:
        return aborted()
    use = wire.usage(job.prompt_tokens, job.output_tokens, call.cached_tokens(job))
    return JSONResponse(
        call.kind.full(call.rid, call.created, call.model, text, job.finish_reason, use)
    )


async def _generate(backend: SimBackend, call: _Call, request: Request, stream: bool) -> Response:
    if stream:
        chunks = _stream(backend, call)
        return StreamingResponse(
            chunks, media_type="text/event-stream", headers=wire.STREAM_HEADERS
        )
    return await _respond(backend, call, request)


def create_app(backend: SimBackend) -> FastAPI:
    """The app of one simulated backend; its lifespan runs the engine loop."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with backend.running():
            yield

    app = FastAPI(title=f"simulated vLLM {backend.identity.backend_id}", lifespan=lifespan)
    app.add_middleware(_ApiKeyCheck, backend=backend)
    _add_info_routes(app, backend)
    if backend.identity.runner == "pooling":
        api_pooling.add_routes(app, backend)
    else:
        _add_generation_routes(app, backend)
        api_responses.add_routes(app, backend)
        api_messages.add_routes(app, backend)
    return app


class _ApiKeyCheck:
    """vLLM's ``--api-key``: every /v1 route needs the Bearer key (/health, /metrics do not);
    the answer without it is vLLM's, 401 ``{"error": "Unauthorized"}``. Every /v1 request's
    ``Authorization`` is recorded, so tests can see what a backend was sent."""

    def __init__(self, app: ASGIApp, backend: SimBackend) -> None:
        self.app = app
        self.backend = backend
        key = backend.identity.api_key
        self.expected = None if key is None else f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        self.backend.authorizations.append(None if given is None else given.decode("latin-1"))
        if self.expected is not None and scope["method"] != "OPTIONS" and given != self.expected:
            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _add_info_routes(app: FastAPI, backend: SimBackend) -> None:
    identity = backend.identity
    created = int(time.time())
    perm_id = f"modelperm-{uuid.uuid4().hex[:16]}"

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        body = wire.model_list(
            identity.served_model_name,
            identity.model_root,
            identity.max_model_len,
            created,
            perm_id,
        )
        return JSONResponse(body)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(backend.metrics_text(), media_type=CONTENT_TYPE)

    @app.put("/sim/fault")
    async def arm_fault(fault: StreamFault) -> Response:
        backend.faults.arm(fault)
        return Response(status_code=204)

    @app.delete("/sim/fault")
    async def clear_fault() -> Response:
        backend.faults.arm(None)
        return Response(status_code=204)

    @app.get("/sim/requests")
    async def received() -> JSONResponse:
        return JSONResponse([body for _, body in backend.received])


def _add_generation_routes(app: FastAPI, backend: SimBackend) -> None:
    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await parse(request, backend, wire.ChatRequest)
            problem = body.template_error()
            if problem is not None:
                raise Rejected(400, wire.bad_request(problem))
            texts = [m.text() for m in body.messages]
            count = (
                continued_chat_prompt_tokens if body.continue_final_message else chat_prompt_tokens
            )
            prompt_tokens = count(texts)
            _check(backend, body, sum(map(len, texts)), prompt_tokens)
        except Rejected as rejected:
            return rejected.response
        turns = [(m.role, m.text()) for m in body.messages]
        pieces = (
            continued_chat_prompt_pieces(turns)
            if body.continue_final_message
            else chat_prompt_pieces(turns)
        )
        call = _accept(backend, CHAT, body, pieces, body.last_user_text(), body.prefix())
        return await _generate(backend, call, request, bool(body.stream))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            body = await parse(request, backend, wire.CompletionRequest)
            prompt = body.prompt_text()
            prompt_tokens = completion_prompt_tokens(prompt)
            _check(backend, body, len(prompt), prompt_tokens)
        except Rejected as rejected:
            return rejected.response
        call = _accept(backend, COMPLETION, body, completion_prompt_pieces(prompt), prompt)
        return await _generate(backend, call, request, bool(body.stream))


def _accept(
    backend: SimBackend,
    kind: _Kind,
    body: wire.ChatRequest | wire.CompletionRequest,
    prompt_pieces: list[str],
    prompt_text: str,
    prefix: str = "",
) -> _Call:
    return _Call(
        kind=kind,
        rid=f"{kind.id_prefix}-{uuid.uuid4().hex[:16]}",
        created=int(time.time()),
        model=backend.identity.served_model_name,
        prompt_tokens=len(prompt_pieces),
        max_tokens=body.output_limit,
        prompt_text=prompt_text,
        include_usage=body.include_usage,
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        prefix=prefix,
        prompt_pieces=prompt_pieces,
        prompt_tokens_details=backend.identity.prompt_tokens_details,
    )
