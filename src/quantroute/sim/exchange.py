"""What every route of a simulated backend shares: parsing a body, rejecting it with vLLM's
error body, checking model and length, waiting for the engine while watching for a client
that goes away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from quantroute.sim import wire
from quantroute.sim.backend import Job, SimBackend

ModelT = TypeVar("ModelT", bound=BaseModel)


class Rejected(Exception):
    """A request the backend answers with an error body instead of work."""

    def __init__(self, status: int, body: wire.JsonObject) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.response = JSONResponse(body, status_code=status)


async def read_json(request: Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as exc:
        raise Rejected(400, wire.bad_request(f"JSON decode error: {exc}")) from exc
    except ClientDisconnect as exc:  # the client gave up while sending its body
        raise Rejected(400, wire.bad_request("client disconnected")) from exc


async def parse(request: Request, backend: SimBackend, model: type[ModelT]) -> ModelT:
    """The body validated as ``model``; the raw body is recorded as received."""
    data = await read_json(request)
    backend.record(request.url.path, data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Rejected(400, wire.bad_request(str(exc))) from exc


def check_model(backend: SimBackend, model: str | None) -> None:
    """vLLM answers a model name it does not serve with 404 (no name means the served one)."""
    if model is not None and model != backend.identity.served_model_name:
        raise Rejected(404, wire.not_found(model, backend.identity.served_model_name))


def check_prompt(backend: SimBackend, chars: int, prompt_tokens: int) -> None:
    limit = backend.identity.max_model_len
    if chars > limit * wire.MAX_CHARS_PER_TOKEN:
        raise Rejected(400, wire.prompt_too_many_chars(chars, limit))
    if prompt_tokens >= limit:
        raise Rejected(400, wire.prompt_too_long(prompt_tokens, limit))


async def wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect(backend: SimBackend, job: Job, request: Request) -> str | None:
    """The whole answer, or None when the client disconnected first (request aborted)."""

    async def drain() -> str:
        return "".join([job.piece(event.index) async for event in job.events()])

    try:
        text = await _race(request, [drain()])
    finally:
        backend.abort(job.request_id)
    return None if text is None else str(text[0])


async def finish_all(backend: SimBackend, jobs: list[Job], request: Request) -> bool:
    """Wait until every job ran to its end; False when the client disconnected first."""

    async def drain(job: Job) -> None:
        async for _ in job.events():
            pass

    try:
        return await _race(request, [drain(job) for job in jobs]) is not None
    finally:
        for job in jobs:
            backend.abort(job.request_id)


async def _race(request: Request, work: Iterable[Any]) -> list[Any] | None:
    """Results of every awaitable in ``work``, or None if the client disconnects first."""
    done = asyncio.ensure_future(asyncio.gather(*work))
    disconnect = asyncio.ensure_future(wait_disconnect(request))
    try:
        await asyncio.wait({done, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        return list(done.result()) if done.done() else None
    finally:
        for task in (done, disconnect):
            task.cancel()
        await asyncio.gather(done, disconnect, return_exceptions=True)


def aborted() -> JSONResponse:
    body = wire.error_body("Request aborted", "ServiceUnavailableError", 503)
    return JSONResponse(body, status_code=503)
