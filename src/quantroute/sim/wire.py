"""The OpenAI-compatible wire format as vLLM 0.32.0 writes it.

Request bodies are validated with pydantic (unknown fields allowed, as vLLM ignores
them); response bodies, stream chunks and error bodies are built field for field like
the captures in tests/fixtures/vllm/ and serialised compactly, as vLLM does.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from quantroute.errors import openai_error_body

SYSTEM_FINGERPRINT = "vllm-0.32.0-5a1b0c0d"
# The character bound vLLM checks before tokenizing: 4608 characters for 512 tokens in
# the capture (overlen_body.json), i.e. 9 characters per token.
MAX_CHARS_PER_TOKEN = 9

JsonObject = dict[str, Any]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Lenient):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text: the string, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class _Generation(_Lenient):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    # vLLM's extra sampling parameters: generate up to the limit / at least this many
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # vLLM's chat template switches: a final assistant message is continued, not answered
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def template_error(self) -> str | None:
        """vLLM's 400 for an inconsistent pair (request validator; the final-message rule is
        the one vLLM's Mistral renderer states, and what a HF template needs to continue)."""
        if self.continue_final_message and self.add_generation_prompt:
            return "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        if self.continue_final_message and self.messages[-1].role != "assistant":
            return (
                "Cannot set `continue_final_message` to True when the last message is not "
                "from the assistant."
            )
        return None

    def prefix(self) -> str:
        """The text the model continues ('' unless ``continue_final_message``)."""
        return self.messages[-1].text() if self.continue_final_message else ""

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def last_user_text(self) -> str:
        """The text of the last user message ('' when there is none)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text()
        return ""


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(default=16, ge=1)

    @property
    def output_limit(self) -> int | None:
        return self.max_tokens

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else "".join(self.prompt)


def dumps(value: object) -> str:
    """Compact JSON, non-ASCII kept, as vLLM serialises."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sse(value: object) -> str:
    return f"data: {dumps(value)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
STREAM_HEADERS = {"vary": "Origin"}  # vLLM's CORS middleware on a streamed answer


# -- errors --------------------------------------------------------------------------


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> JsonObject:
    """vLLM's error body: OpenAI's format with the HTTP status as ``code``."""
    return openai_error_body(message, err_type, param=param, code=code)


def not_found(model: str, served: str) -> JsonObject:
    message = f"The model `{model}` does not exist. Valid aliases: {served}."
    return error_body(message, "NotFoundError", 404, "model")


def bad_request(message: str, param: str | None = None) -> JsonObject:
    return error_body(message, "BadRequestError", 400, param)


def prompt_too_long(prompt_tokens: int, max_model_len: int) -> JsonObject:
    """vLLM's body for a prompt of more tokens than the model's context."""
    value = min(prompt_tokens, max_model_len + 1)
    return bad_request(
        f"This model's maximum context length is {max_model_len} tokens. However, your "
        f"prompt contains at least {value} input tokens, which exceeds this limit even "
        "without any output tokens. Please reduce the length of the input prompt. "
        f"(parameter=input_tokens, value={value})",
        "input_tokens",
    )


def prompt_too_many_chars(chars: int, max_model_len: int) -> JsonObject:
    """vLLM's body for a prompt over the character bound, checked before tokenizing."""
    bound = max_model_len * MAX_CHARS_PER_TOKEN
    return bad_request(
        f"This model's maximum context length is {max_model_len} tokens. However, your "
        f"prompt contains {chars} characters (more than {bound} characters, which is the "
        f"upper bound for {max_model_len} input tokens). Please reduce the length of the "
        f"input prompt. (parameter=input_text, value={chars})",
        "input_text",
    )


def max_tokens_too_large(
    max_tokens: int, max_model_len: int, param: str = "max_tokens"
) -> JsonObject:
    """vLLM 0.32's body for an output limit over ``max_model_len`` (``param`` names the field:
    ``max_tokens``, the Responses API's ``max_output_tokens``, or ``max_completion_tokens`` for
    the Messages API, which vLLM serves as a chat completion)."""
    return bad_request(
        f"{param}={max_tokens} cannot be greater than max_model_len={max_model_len}. Please "
        f"request fewer output tokens. (parameter={param}, value={max_tokens})",
        param,
    )


# -- responses -----------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> JsonObject:
    """The usage object; `prompt_tokens_details` only for a non-zero cache hit, as vLLM
    (with --enable-prompt-tokens-details) leaves it unset when nothing was cached."""
    use: JsonObject = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if cached_tokens:
        use["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return use


def full_usage(use: JsonObject) -> JsonObject:
    """A non-streamed response's usage: unset details are written as null, in vLLM's order."""
    details = use.get("prompt_tokens_details")
    return {**use, "prompt_tokens_details": details, "completion_tokens_details": None}


def chat_completion(
    rid: str, created: int, model: str, text: str, finish_reason: str, use: JsonObject
) -> JsonObject:
    message = {"role": "assistant", "content": text, "refusal": None, "annotations": None,
               "audio": None, "function_call": None, "reasoning": None}  # fmt: skip
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason,
              "stop_reason": None, "token_ids": None, "routed_experts": None}  # fmt: skip
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [choice], "service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": full_usage(use),
        "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
        "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
    }  # fmt: skip


def _chunk_head(rid: str, created: int, model: str, obj: str) -> JsonObject:
    return {"id": rid, "object": obj, "created": created, "model": model}


def chat_role_chunk(rid: str, created: int, model: str) -> JsonObject:
    choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
              "finish_reason": None}  # fmt: skip
    return {**_chunk_head(rid, created, model, "chat.completion.chunk"), "choices": [choice],
            "prompt_token_ids": None, "prompt_text": None}  # fmt: skip


def chat_content_chunk(
    rid: str, created: int, model: str, piece: str, finish_reason: str | None
) -> JsonObject:
    choice: JsonObject = {"index": 0, "delta": {"content": piece}, "logprobs": None,
                          "finish_reason": finish_reason}  # fmt: skip
    if finish_reason is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return {**_chunk_head(rid, created, model, "chat.completion.chunk"), "choices": [choice]}


def usage_chunk(rid: str, created: int, model: str, obj: str, use: JsonObject) -> JsonObject:
    return {**_chunk_head(rid, created, model, obj), "choices": [], "usage": use,
            "system_fingerprint": SYSTEM_FINGERPRINT}  # fmt: skip


def completion(
    rid: str, created: int, model: str, text: str, finish_reason: str, use: JsonObject
) -> JsonObject:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
              "stop_reason": None, "token_ids": None, "prompt_logprobs": None,
              "prompt_token_ids": None}  # fmt: skip
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [choice], "service_tier": None, "system_fingerprint": None,
        "usage": full_usage(use),
        "kv_transfer_params": None,
    }  # fmt: skip


def completion_chunk(
    rid: str, created: int, model: str, piece: str, finish_reason: str | None
) -> JsonObject:
    choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish_reason,
              "stop_reason": None, "token_ids": None}  # fmt: skip
    return {**_chunk_head(rid, created, model, "text_completion"), "choices": [choice]}


def model_list(model: str, root: str, max_model_len: int, created: int, perm_id: str) -> JsonObject:
    permission = {
        "id": perm_id, "object": "model_permission", "created": created,
        "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
        "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
        "organization": "*", "group": None, "is_blocking": False,
    }  # fmt: skip
    card = {"id": model, "object": "model", "created": created, "owned_by": "vllm",
            "root": root, "parent": None, "max_model_len": max_model_len,
            "permission": [permission]}  # fmt: skip
    return {"object": "list", "data": [card]}
