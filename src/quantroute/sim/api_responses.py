"""``/v1/responses`` of a simulated vLLM backend: create (stream and not), retrieve, cancel.

Like vLLM 0.32, the backend keeps responses only when its store is enabled
(``VLLM_ENABLE_RESPONSES_API_STORE=1``, here ``responses_store: true`` in the fleet file),
only in its own memory and never evicts them. With the store off (vLLM's default) ``store``
is silently ignored, ``previous_response_id`` and retrieve answer 404, and background mode
is refused with 400.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from quantroute.sim import wire
from quantroute.sim import wire_responses as rw
from quantroute.sim.backend import Job, SimBackend
from quantroute.sim.exchange import Rejected, aborted, check_model, collect, parse
from quantroute.sim.text import chat_prompt_pieces, chat_prompt_tokens

Turns = list[tuple[str, str]]


@dataclass
class _Stored:
    turns: Turns
    response: wire.JsonObject


@dataclass
class _Store:
    enabled: bool
    responses: dict[str, _Stored] = field(default_factory=dict)

    def history(self, body: rw.ResponsesRequest) -> Turns:
        """The earlier turns ``previous_response_id`` names (instructions do not carry over)."""
        rid = body.previous_response_id
        if rid is None:
            return []
        stored = self.responses.get(rid) if self.enabled else None
        if stored is None:
            raise Rejected(404, rw.not_found(rid))
        answers = [
            ("assistant", rw.part_text(part))
            for item in stored.response["output"]
            if item.get("type") == "message"
            for part in item["content"]
        ]
        return [t for t in stored.turns if t[0] != "system"] + answers

    def keep(self, body: rw.ResponsesRequest, turns: Turns, response: wire.JsonObject) -> None:
        if self.enabled and body.store:
            self.responses[response["id"]] = _Stored(turns, response)


@dataclass(frozen=True)
class _Call:
    body: rw.ResponsesRequest
    rid: str
    created: int
    model: str
    turns: Turns
    prompt_tokens: int
    max_tokens: int

    def submit(self, backend: SimBackend) -> Job:
        last_user = next((text for role, text in reversed(self.turns) if role == "user"), "")
        return backend.submit(
            self.prompt_tokens,
            self.max_tokens,
            last_user,
            ignore_eos=self.body.ignore_eos,
            min_tokens=self.body.min_tokens,
            prompt_pieces=chat_prompt_pieces(self.turns),
        )

    def response(
        self, output: list[wire.JsonObject], status: str, job: Job | None
    ) -> wire.JsonObject:
        use = None if job is None else rw.usage(job.prompt_tokens, job.output_tokens)
        return rw.response_object(
            self.body, self.rid, self.created, self.model, self.max_tokens,
            output=output, status=status, use=use,
        )  # fmt: skip


def _status(job: Job) -> str:
    return "incomplete" if job.finish_reason == "length" else "completed"


def _accept(backend: SimBackend, store: _Store, body: rw.ResponsesRequest) -> _Call:
    check_model(backend, body.model)
    if body.background:
        if body.store is False:
            raise Rejected(400, rw.background_needs_store())
        if not store.enabled:
            raise Rejected(400, rw.background_unsupported())
    turns = store.history(body) + rw.conversation(None, body.input)
    if body.instructions:
        turns = [("system", body.instructions), *turns]
    texts = [text for _, text in turns]
    prompt_tokens = chat_prompt_tokens(texts)
    limit = backend.identity.max_model_len
    chars = sum(map(len, texts))
    if chars > limit * wire.MAX_CHARS_PER_TOKEN:
        raise Rejected(400, wire.prompt_too_many_chars(chars, limit))
    if prompt_tokens >= limit:
        raise Rejected(400, wire.prompt_too_long(prompt_tokens, limit))
    wanted = body.max_output_tokens
    if wanted is not None and wanted > limit:
        raise Rejected(400, wire.max_tokens_too_large(wanted, limit, "max_output_tokens"))
    room = limit - prompt_tokens
    max_tokens = min(wanted or room, room)
    rid = body.model_extra.get("request_id") if body.model_extra else None
    return _Call(
        body,
        rid if isinstance(rid, str) else f"resp_{uuid.uuid4().hex[:16]}",
        int(time.time()),
        backend.identity.served_model_name,
        turns,
        prompt_tokens,
        max_tokens,
    )


async def _stream(backend: SimBackend, store: _Store, call: _Call) -> AsyncIterator[str]:
    job = call.submit(backend)
    events = rw.EventWriter(f"msg_{uuid.uuid4().hex[:16]}")
    initial = call.response([], "in_progress", None)
    try:
        yield events.envelope("response.created", initial)
        yield events.envelope("response.in_progress", initial)
        async for event in job.events():
            if event.index == 0:
                for frame in events.open_message():
                    yield frame
            yield events.delta(job.piece(event.index))
        if not job.finished:
            return  # the backend shut down
        for frame in events.close_message():
            yield frame
        item = rw.output_message(events.item_id, events.text, "completed")
        final = call.response([item], _status(job), job)
        store.keep(call.body, call.turns, final)
        yield events.envelope("response.completed", final)
    finally:
        backend.abort(job.request_id)


async def _respond(backend: SimBackend, store: _Store, call: _Call, request: Request) -> Response:
    job = call.submit(backend)
    text = await collect(backend, job, request)
    if text is None or job.finish_reason is None:
        return aborted()
    item = rw.output_message(f"msg_{uuid.uuid4().hex[:16]}", text, "completed")
    final = call.response([item], _status(job), job)
    store.keep(call.body, call.turns, final)
    return JSONResponse(final)


def add_routes(app: FastAPI, backend: SimBackend) -> None:
    store = _Store(backend.identity.responses_store)

    @app.post("/v1/responses")
    async def create(request: Request) -> Response:
        try:
            call = _accept(backend, store, await parse(request, backend, rw.ResponsesRequest))
        except Rejected as rejected:
            return rejected.response
        if call.body.stream:
            frames = _stream(backend, store, call)
            return StreamingResponse(
                frames, media_type="text/event-stream", headers=wire.STREAM_HEADERS
            )
        return await _respond(backend, store, call, request)

    @app.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str) -> Response:
        stored = store.responses.get(response_id)
        if stored is None:
            return JSONResponse(rw.not_found(response_id), status_code=404)
        return JSONResponse(stored.response)

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel(response_id: str) -> Response:
        if response_id not in store.responses:
            return JSONResponse(rw.not_found(response_id), status_code=404)
        return JSONResponse(rw.cannot_cancel(), status_code=400)
