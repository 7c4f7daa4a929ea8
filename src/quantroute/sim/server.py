"""The OpenAI-compatible HTTP app of one simulated vLLM backend.

Routes: POST /v1/chat/completions and /v1/completions (stream and non-stream),
GET /v1/models, /health and /metrics. Requests are checked in vLLM's order (body,
model name, prompt length, max_tokens) and rejected with vLLM's error bodies. A
client that goes away aborts its request in the engine, streaming or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from quantroute.sim import wire
from quantroute.sim.backend import Job, SimBackend
from quantroute.sim.text import chat_prompt_tokens, completion_prompt_tokens

RequestT = TypeVar("RequestT", wire.ChatRequest, wire.CompletionRequest)
STREAM_HEADERS = {"vary": "Origin"}


class _Rejected(Exception):
    def __init__(self, status: int, body: wire.JsonObject) -> None:
        super().__init__(status)
        self.response = JSONResponse(body, status_code=status)


async def _parse(request: Request, model: type[RequestT]) -> RequestT:
    try:
        return model.model_validate(await request.json())
    except json.JSONDecodeError as exc:
        raise _Rejected(400, wire.bad_request(f"JSON decode error: {exc}")) from exc
    except ValidationError as exc:
        raise _Rejected(400, wire.bad_request(str(exc))) from exc


def _check(backend: SimBackend, body: RequestT, chars: int, prompt_tokens: int) -> None:
    identity = backend.identity
    limit = identity.max_model_len
    if body.model != identity.served_model_name:
        raise _Rejected(404, wire.not_found(body.model))
    if chars > limit * wire.MAX_CHARS_PER_TOKEN:
        raise _Rejected(400, wire.prompt_too_many_chars(chars, limit))
    if prompt_tokens >= limit:
        raise _Rejected(400, wire.prompt_too_long(prompt_tokens, limit))
    if body.output_limit is not None and body.output_limit > limit:
        raise _Rejected(400, wire.max_tokens_too_large(body.output_limit, limit, prompt_tokens))


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(backend: SimBackend, job: Job, request: Request) -> str | None:
    """The whole answer, or None when the client disconnected first (request aborted)."""

    async def drain() -> str:
        return "".join([job.piece(event.index) async for event in job.events()])

    collect = asyncio.ensure_future(drain())
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({collect, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        return collect.result() if collect.done() else None
    finally:
        for task in (collect, disconnect):
            task.cancel()
        backend.abort(job.request_id)


Chunker = Callable[[str, int, str | None], wire.JsonObject]


async def _stream(
    backend: SimBackend,
    make_job: Callable[[], Job],
    chunk: Chunker,
    head: wire.JsonObject | None,
    usage_of: Callable[[Job], wire.JsonObject] | None,
) -> AsyncIterator[str]:
    """SSE framing as vLLM's: [role chunk], content chunks (the last with its finish
    reason), [usage chunk], [DONE]. Closing the generator aborts the request."""
    job = make_job()
    try:
        async for event in job.events():
            if head is not None and event.index == 0:
                yield wire.sse(head)
            yield wire.sse(chunk(job.piece(event.index), event.index, event.finish_reason))
        if not job.finished:
            return  # the backend shut down
        if usage_of is not None:
            yield wire.sse(usage_of(job))
        yield wire.SSE_DONE
    finally:
        backend.abort(job.request_id)


def create_app(backend: SimBackend) -> FastAPI:
    """The app of one simulated backend; its lifespan runs the engine loop."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with backend.running():
            yield

    app = FastAPI(title=f"simulated vLLM {backend.identity.backend_id}", lifespan=lifespan)
    _add_info_routes(app, backend)
    _add_generation_routes(app, backend)
    return app


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
        return Response(backend.metrics_text(), media_type=CONTENT_TYPE_LATEST)


def _add_generation_routes(app: FastAPI, backend: SimBackend) -> None:
    model = backend.identity.served_model_name

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await _parse(request, wire.ChatRequest)
            texts = [m.text() for m in body.messages]
            prompt_tokens = chat_prompt_tokens(texts)
            _check(backend, body, sum(map(len, texts)), prompt_tokens)
        except _Rejected as rejected:
            return rejected.response
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time())

        def make_job() -> Job:
            return backend.submit(prompt_tokens, body.output_limit, body.last_user_text())

        if body.stream:
            head = wire.chat_role_chunk(rid, created, model)

            def chunk(piece: str, _index: int, reason: str | None) -> wire.JsonObject:
                return wire.chat_content_chunk(rid, created, model, piece, reason)

            usage = _usage_chunker(rid, created, model, "chat.completion.chunk", body)
            return _sse_response(_stream(backend, make_job, chunk, head, usage))
        return await _respond(backend, make_job(), request, rid, created, wire.chat_completion)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            body = await _parse(request, wire.CompletionRequest)
            prompt = body.prompt_text()
            prompt_tokens = completion_prompt_tokens(prompt)
            _check(backend, body, len(prompt), prompt_tokens)
        except _Rejected as rejected:
            return rejected.response
        rid, created = f"cmpl-{uuid.uuid4().hex[:16]}", int(time.time())

        def make_job() -> Job:
            return backend.submit(prompt_tokens, body.output_limit, prompt)

        if body.stream:

            def chunk(piece: str, _index: int, reason: str | None) -> wire.JsonObject:
                return wire.completion_chunk(rid, created, model, piece, reason)

            usage = _usage_chunker(rid, created, model, "text_completion", body)
            return _sse_response(_stream(backend, make_job, chunk, None, usage))
        return await _respond(backend, make_job(), request, rid, created, wire.completion)


def _usage_chunker(
    rid: str, created: int, model: str, obj: str, body: Any
) -> Callable[[Job], wire.JsonObject] | None:
    if not body.include_usage:
        return None

    def usage(job: Job) -> wire.JsonObject:
        return wire.usage_chunk(
            rid, created, model, obj, wire.usage(job.prompt_tokens, job.output_tokens)
        )

    return usage


def _sse_response(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=STREAM_HEADERS)


async def _respond(
    backend: SimBackend,
    job: Job,
    request: Request,
    rid: str,
    created: int,
    build: Callable[..., wire.JsonObject],
) -> Response:
    text = await _collect(backend, job, request)
    if text is None or job.finish_reason is None:
        body = wire.error_body("Request aborted", "ServiceUnavailableError", 503)
        return JSONResponse(body, status_code=503)
    model = backend.identity.served_model_name
    usage = wire.usage(job.prompt_tokens, job.output_tokens)
    return JSONResponse(build(rid, created, model, text, job.finish_reason, usage))
