"""The forwarding path's view of the Responses, Messages and pooling APIs (see
:mod:`quantroute.proxy.exchange`): upstream path and body, stream tap, usage, client body, and
for the Responses API the stored turn once the answer is complete."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from quantroute.apis import anthropic_errors
from quantroute.apis.conversations import ConversationStore, Item, StoredResponse
from quantroute.apis.taps import MessagesTap, ResponsesTap, messages_usage, responses_usage
from quantroute.proxy.exchange import Tap
from quantroute.proxy.parse import ParsedRequest
from quantroute.proxy.sse import SSEUsageTap, Usage, usage_from_body

log = logging.getLogger("quantroute.apis")


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _Forwarded:
    """The body as parsed, with the backend's served model name."""

    def __init__(self, parsed: ParsedRequest, path: str) -> None:
        self.parsed = parsed
        self.path = path

    def body_for(self, served_model_name: str) -> tuple[bytes, bool]:
        body = self.parsed.body
        if self.parsed.raw and body.get("model") == served_model_name:
            return self.parsed.raw, False
        return _dumps({**body, "model": served_model_name}), False


class ResponsesExchange(_Forwarded):
    def __init__(
        self,
        parsed: ParsedRequest,
        *,
        client_body: Mapping[str, Any],
        own_items: list[Item],
        ancestors: tuple[str, ...],
        conversations: ConversationStore,
        owner: str | None = None,
    ) -> None:
        super().__init__(parsed, "/v1/responses")
        self._owner = owner
        previous = client_body.get("previous_response_id")
        self._restore = {"previous_response_id": previous} if previous else {}
        self._keep = client_body.get("store") is not False
        self._own = own_items
        self._ancestors = ancestors
        self._store = conversations
        self._tap: ResponsesTap | None = None
        self._final: dict[str, Any] | None = None

    def tap(self, strip_usage: bool) -> Tap:
        self._tap = ResponsesTap(self._restore)
        return self._tap

    def usage(self, data: bytes) -> Usage | None:
        body = _json(data)
        return responses_usage(body) if isinstance(body, dict) else None

    def client_body(self, status: int, data: bytes) -> bytes:
        body = _json(data) if status == 200 else None
        if not isinstance(body, dict):
            return data
        self._final = body
        if not self._restore:
            return data
        body.update(self._restore)
        return _dumps(body)

    def stream_error(self, message: str) -> bytes:
        event = {"type": "error", "code": "upstream_error", "message": message, "param": None,
                 "sequence_number": 0}  # fmt: skip
        return b"event: error\ndata: " + _dumps(event) + b"\n\n"

    async def completed(self, status: int) -> None:
        final = self._tap.final if self._tap is not None else self._final
        if status != 200 or not self._keep or final is None or not isinstance(final.get("id"), str):
            return
        record = StoredResponse(final["id"], self._ancestors, tuple(self._own), final, self._owner)
        try:
            await self._store.put(record)
        except Exception as exc:  # the answer went out; only its continuation is lost
            log.warning("could not store response %s: %s", final["id"], exc)


class MessagesExchange(_Forwarded):
    def __init__(self, parsed: ParsedRequest) -> None:
        super().__init__(parsed, "/v1/messages")

    def tap(self, strip_usage: bool) -> Tap:
        return MessagesTap()

    def usage(self, data: bytes) -> Usage | None:
        body = _json(data)
        return messages_usage(body) if isinstance(body, dict) else None

    def client_body(self, status: int, data: bytes) -> bytes:
        return anthropic_errors.translate(status, data) if status >= 400 else data

    def stream_error(self, message: str) -> bytes:
        body = anthropic_errors.body(502, message)
        return b"event: error\ndata: " + _dumps(body) + b"\n\n"

    async def completed(self, status: int) -> None:
        return None


class PoolingExchange(_Forwarded):
    """Embeddings, score, rerank: one JSON answer, usage in OpenAI's ``prompt_tokens``."""

    def tap(self, strip_usage: bool) -> Tap:
        return SSEUsageTap(False)

    def usage(self, data: bytes) -> Usage | None:
        return usage_from_body(data)

    def client_body(self, status: int, data: bytes) -> bytes:
        return data

    def stream_error(self, message: str) -> bytes:
        return message.encode()

    async def completed(self, status: int) -> None:
        return None
