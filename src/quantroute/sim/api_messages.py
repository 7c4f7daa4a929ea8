"""``/v1/messages`` (Anthropic format) of a simulated vLLM backend, stream and non-stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from quantroute.sim import wire
from quantroute.sim import wire_messages as mw
from quantroute.sim.backend import Job, SimBackend
from quantroute.sim.exchange import Rejected, check_model, check_prompt, collect, parse
from quantroute.sim.text import chat_prompt_pieces, chat_prompt_tokens


def _anthropic(rejected: Rejected) -> Response:
    return JSONResponse(mw.error(rejected.body), status_code=rejected.status)


def _check(backend: SimBackend, body: mw.MessagesRequest) -> int:
    texts = [text for _, text in body.turns()]
    prompt_tokens = chat_prompt_tokens(texts)
    check_prompt(backend, sum(map(len, texts)), prompt_tokens)
    limit = backend.identity.max_model_len
    if body.max_tokens > limit:
        raise Rejected(
            400, wire.max_tokens_too_large(body.max_tokens, limit, "max_completion_tokens")
        )
    return prompt_tokens


def _submit(backend: SimBackend, body: mw.MessagesRequest, prompt_tokens: int) -> Job:
    last_user = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")
    return backend.submit(
        prompt_tokens,
        body.max_tokens,
        last_user,
        ignore_eos=body.ignore_eos,
        prompt_pieces=chat_prompt_pieces(body.turns()),
    )


async def _stream(
    backend: SimBackend, body: mw.MessagesRequest, prompt_tokens: int, mid: str
) -> AsyncIterator[str]:
    """Frames of one streamed message; closing the generator aborts the request."""
    model = backend.identity.served_model_name
    job = _submit(backend, body, prompt_tokens)
    try:
        yield mw.message_start(mid, model, job.prompt_tokens)
        async for event in job.events():
            if event.index == 0:
                yield mw.block_start(0)
            yield mw.text_delta(0, job.piece(event.index))
        if not job.finished:
            return  # the backend shut down
        if job.output_tokens:
            yield mw.block_stop(0)
        yield mw.message_delta(job.finish_reason, mw.usage(job.prompt_tokens, job.output_tokens))
        yield mw.message_stop()
    finally:
        backend.abort(job.request_id)


def add_routes(app: FastAPI, backend: SimBackend) -> None:
    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        try:
            body = await parse(request, backend, mw.MessagesRequest)
        except Rejected as rejected:  # request validation: vLLM's OpenAI-format 400
            return rejected.response
        try:
            check_model(backend, body.model)
            prompt_tokens = _check(backend, body)
        except Rejected as rejected:
            return _anthropic(rejected)
        mid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        if body.stream:
            stream = _stream(backend, body, prompt_tokens, mid)
            return StreamingResponse(
                stream, media_type="text/event-stream", headers=wire.STREAM_HEADERS
            )
        job = _submit(backend, body, prompt_tokens)
        text = await collect(backend, job, request)
        if text is None or job.finish_reason is None:
            status = wire.error_body("Request aborted", "ServiceUnavailableError", 503)
            return JSONResponse(mw.error(status), status_code=503)
        use = mw.usage(job.prompt_tokens, job.output_tokens)
        model = backend.identity.served_model_name
        return JSONResponse(mw.message(mid, model, text, job.finish_reason, use))
