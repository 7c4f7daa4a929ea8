"""The Responses API (``/v1/responses``) as vLLM 0.32.0 writes it for a non-reasoning model.

Shapes follow ``vllm/entrypoints/openai/responses/{protocol,serving,streaming_events}.py``:
the response object carries every field (``null`` when unset); a stream is ``event: <type>``
plus ``data: <json>`` frames: ``response.created``, ``response.in_progress``, then per output
message ``response.output_item.added``, ``response.content_part.added``, one
``response.output_text.delta`` per token, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, and last
``response.completed`` with the whole response and its usage (vLLM sends
``response.completed`` with ``status: "incomplete"`` when ``max_output_tokens`` cut the
answer; it has no ``response.incomplete`` event). ``sequence_number`` counts from 0.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from quantroute.sim.wire import JsonObject, _Lenient, dumps, error_body


class ResponsesRequest(_Lenient):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    store: bool | None = True
    background: bool | None = False
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    metadata: dict[str, str] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)


def part_text(part: object) -> str:
    """The text of one content part (input_text, output_text, text, refusal...)."""
    if not isinstance(part, dict):
        return ""
    for key in ("text", "refusal"):
        value = part.get(key)
        if isinstance(value, str):
            return value
    return ""


def item_message(item: dict[str, Any]) -> tuple[str, str]:
    """One input item as (role, text): messages by their role, tool items by what they carry."""
    kind = item.get("type", "message")
    if kind == "message":
        content = item.get("content")
        text = content if isinstance(content, str) else "".join(map(part_text, content or []))
        return str(item.get("role", "user")), text
    if kind == "function_call":
        return "assistant", f"{item.get('name', '')}({item.get('arguments', '')})"
    if kind == "function_call_output":
        output = item.get("output")
        return "tool", output if isinstance(output, str) else dumps(output)
    if kind == "reasoning":
        return "assistant", "".join(map(part_text, item.get("content") or []))
    return "user", ""


def conversation(
    instructions: str | None, items: str | list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """The chat the model sees: instructions as the system message, then the input items."""
    messages = [("system", instructions)] if instructions else []
    if isinstance(items, str):
        return [*messages, ("user", items)]
    return messages + [item_message(item) for item in items]


def output_message(item_id: str, text: str, status: str) -> JsonObject:
    part = output_text(text, None)
    return {"id": item_id, "content": [part] if text else [], "role": "assistant",
            "status": status, "type": "message", "phase": None}  # fmt: skip


def output_text(text: str, logprobs: list[Any] | None) -> JsonObject:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def usage(input_tokens: int, output_tokens: int) -> JsonObject:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0,
                                 "input_tokens_per_turn": [], "cached_tokens_per_turn": []},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                  "output_tokens_per_turn": [], "tool_output_tokens_per_turn": []},
        "total_tokens": input_tokens + output_tokens,
    }  # fmt: skip


def response_object(
    request: ResponsesRequest,
    rid: str,
    created: int,
    model: str,
    max_tokens: int,
    *,
    output: list[JsonObject],
    status: str,
    use: JsonObject | None,
) -> JsonObject:
    """``ResponsesResponse.from_request`` field for field, as ``model_dump(mode="json")``."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": rid, "created_at": created, "incomplete_details": incomplete,
        "instructions": request.instructions, "metadata": request.metadata, "model": model,
        "object": "response", "output": output, "parallel_tool_calls": True,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "tool_choice": request.tool_choice if request.tools else "none",
        "tools": request.tools, "top_p": 1.0 if request.top_p is None else request.top_p,
        "background": bool(request.background), "max_output_tokens": max_tokens,
        "max_tool_calls": None, "previous_response_id": request.previous_response_id,
        "prompt": None, "reasoning": None, "service_tier": "auto", "status": status,
        "text": None, "top_logprobs": None, "truncation": "disabled", "usage": use,
        "user": None, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "kv_transfer_params": None, "ec_transfer_params": None, "input_messages": None,
        "output_messages": None,
    }  # fmt: skip


class EventWriter:
    """SSE frames of one streamed response, numbered in order."""

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        self._sequence = 0
        self._text: list[str] = []

    def _frame(self, kind: str, fields: JsonObject) -> str:
        # the openai types vLLM serialises declare an event's fields in alphabetical order
        event = dict(sorted({**fields, "sequence_number": self._sequence, "type": kind}.items()))
        self._sequence += 1
        return f"event: {kind}\ndata: {dumps(event)}\n\n"

    def envelope(self, kind: str, response: JsonObject) -> str:
        """``response.created`` / ``response.in_progress`` / ``response.completed``."""
        return self._frame(kind, {"response": response})

    def open_message(self) -> list[str]:
        item = output_message(self.item_id, "", "in_progress")
        where = {"item_id": self.item_id, "output_index": 0}
        return [
            self._frame("response.output_item.added", {"item": item, "output_index": 0}),
            self._frame(
                "response.content_part.added",
                {"content_index": 0, **where, "part": output_text("", [])},
            ),
        ]

    def delta(self, piece: str) -> str:
        self._text.append(piece)
        return self._frame(
            "response.output_text.delta",
            {"content_index": 0, "delta": piece, "item_id": self.item_id, "logprobs": [],
             "output_index": 0},
        )  # fmt: skip

    def close_message(self) -> list[str]:
        text = "".join(self._text)
        where = {"item_id": self.item_id, "output_index": 0}
        item = output_message(self.item_id, text, "completed")
        return [
            self._frame(
                "response.output_text.done",
                {**where, "content_index": 0, "logprobs": [], "text": text},
            ),
            self._frame(
                "response.content_part.done",
                {"content_index": 0, **where, "part": output_text(text, None)},
            ),
            self._frame("response.output_item.done", {"item": item, "output_index": 0}),
        ]

    @property
    def text(self) -> str:
        return "".join(self._text)


def not_found(response_id: str) -> JsonObject:
    message = f"Response with id '{response_id}' not found."
    return error_body(message, "invalid_request_error", 404, "response_id")


def background_unsupported() -> JsonObject:
    message = (
        "This vLLM engine does not support `store=True` and therefore does not support the "
        "background mode. To enable these features, set the environment variable "
        "`VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server."
    )
    return error_body(message, "invalid_request_error", 400, "background")


def background_needs_store() -> JsonObject:
    message = "background can only be used when `store` is true"
    return error_body(message, "BadRequestError", 400, "background")


def cannot_cancel() -> JsonObject:
    message = "Cannot cancel a synchronous response."
    return error_body(message, "invalid_request_error", 400, "response_id")
