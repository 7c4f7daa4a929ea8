"""HTTP routes of the Responses, Messages and pooling APIs; thin, like ``server/routes.py``.

``POST /v1/responses`` resolves ``previous_response_id`` from the gateway's conversation store
and forwards the whole conversation; ``GET`` / ``DELETE /v1/responses/{id}`` answer from the
store; ``POST /v1/responses/{id}/cancel`` refuses (there are no background responses to
cancel). ``POST /v1/messages`` answers every error in Anthropic's format. Embeddings, score and
rerank keep vLLM's paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import cast

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from quantroute.access.keys import OPEN, Principal
from quantroute.apis import anthropic_errors, parsing
from quantroute.apis.conversations import (
    ConversationGone,
    ConversationStore,
    Item,
    MemoryConversations,
    StoredResponse,
    continuation,
)
from quantroute.apis.exchanges import MessagesExchange, PoolingExchange, ResponsesExchange
from quantroute.config import ConversationsConfig
from quantroute.core.prefix import PrefixSettings
from quantroute.errors import RequestError, ResponseNotFound
from quantroute.proxy.parse import Kind
from quantroute.server.gateway import ROUTING_HEADERS
from quantroute.server.live import gateway_of

POOLING_PATHS: dict[str, Kind] = {
    "/v1/embeddings": "embeddings",
    "/v1/score": "score",
    "/score": "score",
    "/v1/rerank": "rerank",
    "/rerank": "rerank",
    "/v2/rerank": "rerank",
}


def open_store(config: ConversationsConfig, clock: Callable[[], float]) -> ConversationStore:
    if config.redis_url:
        from quantroute.apis.conversations_redis import RedisConversations

        return RedisConversations(
            config.redis_url,
            ttl_s=config.ttl_s,
            prefix=config.redis_prefix,
            timeout_s=config.redis_timeout_s,
        )
    return MemoryConversations(max_entries=config.max_entries, ttl_s=config.ttl_s, clock=clock)


@contextlib.asynccontextmanager
async def conversations(
    app: FastAPI, config: ConversationsConfig, clock: Callable[[], float]
) -> AsyncIterator[ConversationStore]:
    """The app's conversation store for the duration of its lifespan."""
    store = open_store(config, clock)
    app.state.conversations = store
    try:
        yield store
    finally:
        await store.aclose()


def _store(request: Request) -> ConversationStore:
    return cast(ConversationStore, request.app.state.conversations)


def _owner(request: Request) -> str | None:
    """The caller's key name, which owns the responses it stores (None: no keys configured)."""
    principal: Principal = (request.scope.get("state") or {}).get("principal", OPEN)
    return None if principal is OPEN else principal.name


async def _visible(request: Request, rid: str) -> StoredResponse:
    record = await _store(request).get(rid)
    if record is None or not record.visible_to(_owner(request)):
        raise ResponseNotFound(rid, param="response_id", code="response_not_found")
    return record


def _headers(request: Request) -> dict[str, str]:
    """The routing headers, and the session header the prefix index reads."""
    session = gateway_of(request).config.policy.prefix.session_header.lower()
    names = (*ROUTING_HEADERS, session)
    return {k: request.headers[k] for k in names if k in request.headers}


def _prefix(request: Request) -> PrefixSettings | None:
    tracker = gateway_of(request).prefix
    return None if tracker is None else tracker.settings


async def create_response(request: Request) -> Response:
    gateway, store = gateway_of(request), _store(request)
    body = parsing.responses_body(await request.body())
    history: list[Item] = []
    ancestors: tuple[str, ...] = ()
    previous = body.get("previous_response_id")
    if previous:
        try:
            found = await continuation(store, previous, _owner(request))
        except ConversationGone:
            found = None
        if found is None:
            raise ResponseNotFound(
                previous, param="previous_response_id", code="previous_response_not_found"
            )
        history, ancestors = found.items, found.ancestors
    sequence = gateway.router.next_sequence()
    parsed, own = parsing.responses(
        body, history, _headers(request), gateway.config.policy, sequence, _prefix(request)
    )
    exchange = ResponsesExchange(
        parsed,
        client_body=body,
        own_items=own,
        ancestors=ancestors,
        conversations=store,
        owner=_owner(request),
    )
    return await gateway.dispatch(parsed, exchange, request)


def _response_id(request: Request) -> str:
    return str(request.path_params["response_id"])


async def retrieve_response(request: Request) -> Response:
    record = await _visible(request, _response_id(request))
    return JSONResponse(dict(record.response))


async def delete_response(request: Request) -> Response:
    rid = _response_id(request)
    await _visible(request, rid)
    if not await _store(request).delete(rid):
        raise ResponseNotFound(rid, param="response_id", code="response_not_found")
    return JSONResponse({"id": rid, "object": "response", "deleted": True})


async def cancel_response(request: Request) -> Response:
    await _visible(request, _response_id(request))
    return JSONResponse(
        {"error": {"message": "Only background responses can be cancelled, and this gateway "
                   "runs none: this response is already complete.",
                   "type": "invalid_request_error", "param": "response_id",
                   "code": "not_cancellable"}},
        status_code=400,
    )  # fmt: skip


async def messages(request: Request) -> Response:
    gateway = gateway_of(request)
    try:
        sequence = gateway.router.next_sequence()
        raw = await request.body()
        parsed = parsing.messages(
            raw, _headers(request), gateway.config.policy, sequence, _prefix(request)
        )
        return await gateway.dispatch(parsed, MessagesExchange(parsed), request)
    except RequestError as exc:
        body = anthropic_errors.body(exc.status, exc.message)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers())


async def pooling(request: Request) -> Response:
    gateway = gateway_of(request)
    path = request.url.path
    sequence = gateway.router.next_sequence()
    raw = await request.body()
    kind = POOLING_PATHS[path]
    parsed = parsing.pooling(kind, raw, _headers(request), gateway.config.policy, sequence)
    return await gateway.dispatch(parsed, PoolingExchange(parsed, path), request)


def install(app: FastAPI) -> None:
    app.add_route("/v1/responses", create_response, methods=["POST"])
    app.add_route("/v1/responses/{response_id}", retrieve_response, methods=["GET"])
    app.add_route("/v1/responses/{response_id}", delete_response, methods=["DELETE"])
    app.add_route("/v1/responses/{response_id}/cancel", cancel_response, methods=["POST"])
    app.add_route("/v1/messages", messages, methods=["POST"])
    for path in POOLING_PATHS:
        app.add_route(path, pooling, methods=["POST"])
