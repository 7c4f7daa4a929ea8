"""What routing needs from a Responses, Messages, embeddings, score or rerank body. Pure.

Each body is read once into an :class:`Extracted`: the requested model, the text the model will
see as chat-form messages (role + text, so the chat estimate and the task heuristic apply
unchanged), the output limit and whether it streams. Only what routing depends on is validated;
problems raise :class:`~quantroute.errors.InvalidRequest` naming the parameter, and everything
else passes through to vLLM, which checks the rest.

- Responses API: ``instructions`` is the system message; ``input`` is text or a list of items:
  messages (``role`` user / assistant / system / developer, ``content`` text or content parts:
  ``input_text``, ``output_text``, ``refusal``..., images and files count no text),
  ``function_call`` (its arguments), ``function_call_output`` (its output), ``reasoning`` (its
  text). An earlier conversation (``previous_response_id``, resolved by the caller) is
  prepended as items.
- Messages API: ``system`` (text or text blocks), then ``messages`` whose ``content`` is text
  or blocks (``text``, ``tool_use`` input, ``tool_result`` content, ``thinking``).
- Pooling: each input is its own sequence; the longest must fit a backend's context, the sum
  is the work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantroute.core import features as feat
from quantroute.errors import InvalidRequest

Message = Mapping[str, object]
RESPONSES_ROLES = frozenset({"user", "assistant", "system", "developer"})
ANTHROPIC_ROLES = frozenset({"user", "assistant"})


@dataclass(frozen=True, slots=True)
class Extracted:
    model: str
    messages: tuple[Message, ...]
    """Chat-form messages (``role``, text ``content``): what the prompt estimate reads."""
    max_tokens: int | None
    stream: bool
    wants_json: bool = False

    def prompt_tokens(self, chars_per_token: float) -> int:
        return feat.estimate_chat_tokens(self.messages, chars_per_token)

    def task_text(self) -> str:
        """The text the task heuristic reads: user and system (and developer) messages."""
        return feat.chat_text(
            [{**m, "role": "system"} if m.get("role") == "developer" else m for m in self.messages]
        )


@dataclass(frozen=True, slots=True)
class PoolingInputs:
    model: str
    sizes: tuple[int, ...]
    """Estimated tokens of each sequence the backend will encode."""


# -- shared checks ---------------------------------------------------------------------------


def require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    return model


def optional_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", param=name)
    return bool(value)


def positive_int(body: Mapping[str, Any], name: str, *, required: bool = False) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    return value


def _text_of(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)


# -- Responses API ---------------------------------------------------------------------------


def _part_text(part: object, where: str) -> str:
    if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
        raise InvalidRequest(f"{where} must be an object with a string 'type'.", param=where)
    for key in ("text", "refusal"):
        value = part.get(key)
        if isinstance(value, str):
            return value
    return ""


def _response_item(item: object, where: str) -> Message:
    if not isinstance(item, Mapping):
        raise InvalidRequest(f"{where} must be an object.", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in RESPONSES_ROLES:
            roles = ", ".join(sorted(RESPONSES_ROLES))
            raise InvalidRequest(f"{where}.role must be one of {roles}.", param=f"{where}.role")
        content = item.get("content")
        if isinstance(content, str):
            return {"role": role, "content": content}
        if not isinstance(content, list):
            raise InvalidRequest(
                f"{where}.content must be a string or an array of content parts.",
                param=f"{where}.content",
            )
        parts = [_part_text(p, f"{where}.content[{i}]") for i, p in enumerate(content)]
        return {"role": role, "content": "\n".join(p for p in parts if p)}
    if kind == "function_call":
        return {"role": "assistant", "content": _text_of(item.get("arguments"))}
    if kind == "function_call_output":
        return {"role": "tool", "content": _text_of(item.get("output"))}
    if kind == "reasoning":
        parts = [*(item.get("summary") or []), *(item.get("content") or [])]
        return {"role": "assistant", "content": "\n".join(_part_text(p, where) for p in parts)}
    if not isinstance(kind, str):
        raise InvalidRequest(f"{where}.type must be a string.", param=f"{where}.type")
    return {"role": "user", "content": ""}  # other item kinds: vLLM checks them


def response_items(value: object) -> list[Message]:
    """``input`` as a list of items (text becomes one user message). Validated."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input")
    for i, item in enumerate(value):
        _response_item(item, f"input[{i}]")
    return list(value)


def responses(body: Mapping[str, Any], history: Sequence[Message] = ()) -> Extracted:
    """A Responses API body; ``history`` is the earlier conversation as input items."""
    model = require_model(body)
    if "input" not in body:
        raise InvalidRequest("'input' is required.", param="input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string.", param="instructions")
    items = [*history, *response_items(body["input"])]
    messages = [_response_item(item, "input") for item in items]
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    wants_json = isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema")
    return Extracted(
        model,
        tuple(messages),
        positive_int(body, "max_output_tokens"),
        optional_bool(body, "stream"),
        wants_json,
    )


# -- Anthropic Messages API ------------------------------------------------------------------


def _block_text(block: object, where: str) -> str:
    if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
        raise InvalidRequest(f"{where} must be an object with a string 'type'.", param=where)
    kind = block["type"]
    if kind == "text":
        return _text_of(block.get("text"))
    if kind == "tool_use":
        return _text_of(block.get("input"))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return "\n".join(_block_text(b, f"{where}.content") for b in content)
        return _text_of(content)
    if kind == "thinking":
        return _text_of(block.get("thinking"))
    return ""  # images, documents: no text to count


def _blocks(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{where} must be a string or an array of content blocks.", param=where
        )
    texts = [_block_text(b, f"{where}[{i}]") for i, b in enumerate(content)]
    return "\n".join(t for t in texts if t)


def anthropic_messages(body: Mapping[str, Any]) -> Extracted:
    model = require_model(body)
    max_tokens = positive_int(body, "max_tokens", required=True)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    messages: list[Message] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _blocks(system, "system")})
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping) or message.get("role") not in ANTHROPIC_ROLES:
            raise InvalidRequest(
                f"{where} must be an object whose 'role' is 'user' or 'assistant'.", param=where
            )
        content = _blocks(message.get("content"), f"{where}.content")
        messages.append({"role": message["role"], "content": content})
    return Extracted(model, tuple(messages), max_tokens, optional_bool(body, "stream"))


# -- pooling: embeddings, score, rerank ------------------------------------------------------


def _sizes(value: object, where: str, chars_per_token: float) -> list[int]:
    """Token estimates of one input or a list of inputs (text, token ids, text parts)."""
    if isinstance(value, str):
        return [feat.estimate_prompt_tokens(value, chars_per_token)]
    if isinstance(value, Mapping):  # a multimodal input: its text parts
        return [
            feat.estimate_prompt_tokens(feat.message_text(value.get("content")), chars_per_token)
        ]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [len(value)]
        sizes: list[int] = []
        for i, v in enumerate(value):
            if isinstance(v, list | str | Mapping):
                sizes.extend(_sizes(v, f"{where}[{i}]", chars_per_token))
            else:
                raise InvalidRequest(f"{where}[{i}] must be text or token ids.", param=where)
        return sizes
    raise InvalidRequest(f"'{where}' must be text, token ids or a non-empty array.", param=where)


SCORE_SIDES = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
               ("text_1", "text_2"))  # fmt: skip


def pooling(kind: str, body: Mapping[str, Any], chars_per_token: float) -> PoolingInputs:
    """``kind`` is ``embeddings``, ``score`` or ``rerank``. The model is required here."""
    model = require_model(body)
    if kind == "embeddings":
        field = "input" if "input" in body else "messages"
        if field == "messages":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise InvalidRequest("'input' is required.", param="input")
            return PoolingInputs(model, (feat.estimate_chat_tokens(messages, chars_per_token),))
        return PoolingInputs(model, tuple(_sizes(body["input"], "input", chars_per_token)))
    if kind == "rerank":
        for name in ("query", "documents"):
            if name not in body:
                raise InvalidRequest(f"'{name}' is required.", param=name)
        query = _sizes(body["query"], "query", chars_per_token)
        return PoolingInputs(
            model, (*query, *_sizes(body["documents"], "documents", chars_per_token))
        )
    for left, right in SCORE_SIDES:
        if left in body and right in body:
            sizes = _sizes(body[left], left, chars_per_token) + _sizes(
                body[right], right, chars_per_token
            )
            return PoolingInputs(model, tuple(sizes))
    raise InvalidRequest(
        "a score request needs one pair of: queries/documents, queries/items, data_1/data_2, "
        "text_1/text_2.",
        param="text_1",
    )
