"""The Anthropic Messages API (``/v1/messages``) as vLLM 0.32.0 writes it.

vLLM serves it by converting to a chat completion and back
(``vllm/entrypoints/anthropic/{protocol,serving,api_router}.py``): the message id is the chat
completion's (``chatcmpl-...``); a non-streamed message is dumped with ``exclude_none``; a
stream is ``event: <type>`` plus ``data: <json>`` frames, dumped with ``exclude_unset``:
``message_start`` (usage with the input tokens, 0 output tokens), per text block
``content_block_start`` / ``content_block_delta`` (``text_delta``) / ``content_block_stop``,
then ``message_delta`` (stop reason and the final usage) and ``message_stop``. vLLM sends no
``ping``. Errors its handler returns are ``{"type": "error", "error": {"type", "message"}}``
with the vLLM error type (``NotFoundError``, ``BadRequestError``...); a body that fails
request validation gets vLLM's OpenAI-format 400, as on every other route.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from quantroute.sim.wire import JsonObject, _Lenient, dumps

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class AnthropicMessage(_Lenient):
    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block_text(block) for block in self.content)


class MessagesRequest(_Lenient):
    model: str = Field(min_length=1)
    messages: list[AnthropicMessage]
    max_tokens: int = Field(gt=0)
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = False
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    ignore_eos: bool = False

    def turns(self) -> list[tuple[str, str]]:
        system = self.system
        if isinstance(system, list):
            system = "".join(block_text(block) for block in system)
        head = [("system", system)] if system else []
        return head + [(m.role, m.text()) for m in self.messages]


def block_text(block: dict[str, Any]) -> str:
    """The text a content block puts in the prompt (text, tool input or result)."""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "tool_use":
        return dumps(block.get("input") or {})
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return "".join(block_text(part) for part in content if isinstance(part, dict))
        return str(content or "")
    if kind == "thinking":
        return str(block.get("thinking") or "")
    return ""


def stop_reason(finish_reason: str | None) -> StopReason:
    return "max_tokens" if finish_reason == "length" else "end_turn"


def usage(input_tokens: int, output_tokens: int) -> JsonObject:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


def message(
    mid: str, model: str, text: str, finish_reason: str | None, use: JsonObject
) -> JsonObject:
    """The non-streamed message (``model_dump(exclude_none=True)``: no null fields)."""
    return {"id": mid, "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": text}], "model": model,
            "stop_reason": stop_reason(finish_reason), "usage": use}  # fmt: skip


def sse(kind: str, data: JsonObject) -> str:
    return f"event: {kind}\ndata: {dumps(data)}\n\n"


def message_start(mid: str, model: str, input_tokens: int) -> str:
    start: JsonObject = {"id": mid, "type": "message", "role": "assistant", "content": [], "model": model,
             "stop_reason": None, "stop_sequence": None, "usage": usage(input_tokens, 0)}  # fmt: skip
    return sse("message_start", {"type": "message_start", "message": start})


def block_start(index: int) -> str:
    block = {"type": "text", "text": ""}
    return sse(
        "content_block_start",
        {"type": "content_block_start", "content_block": block, "index": index},
    )


def text_delta(index: int, text: str) -> str:
    delta = {"type": "text_delta", "text": text}
    return sse(
        "content_block_delta", {"type": "content_block_delta", "delta": delta, "index": index}
    )


def block_stop(index: int) -> str:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(finish_reason: str | None, use: JsonObject) -> str:
    delta = {"stop_reason": stop_reason(finish_reason), "stop_sequence": None}
    return sse("message_delta", {"type": "message_delta", "delta": delta, "usage": use})


def message_stop() -> str:
    return sse("message_stop", {"type": "message_stop"})


def error(status_body: JsonObject) -> JsonObject:
    """vLLM's ``translate_error_response``: its error type and message in Anthropic's envelope."""
    inner = status_body["error"]
    return {"type": "error", "error": {"type": inner["type"], "message": inner["message"]}}
