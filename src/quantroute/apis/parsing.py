"""Bodies of the Responses, Messages and pooling APIs into :class:`ParsedRequest`s.

Features come from :mod:`quantroute.apis.extract`; the task heuristic and the latency class are
the chat path's. What the gateway does not support of the Responses API is refused here with a
clear error rather than passed on to behave differently: background mode (the gateway relays
answers as they are produced and keeps no running task to poll), built-in tools (vLLM runs them
only with a tool server for a few models and otherwise ignores them silently), and
server-side conversations (``conversation``: use ``previous_response_id``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quantroute.apis import extract
from quantroute.apis.conversations import Item
from quantroute.config import ApiName, PolicyConfig
from quantroute.core import features as feat
from quantroute.core.model import RequestFeatures
from quantroute.core.prefix import PrefixSettings, PromptBlocks, chat_prefix_text
from quantroute.errors import InvalidRequest
from quantroute.proxy.parse import (
    TASK_HEADER,
    Kind,
    ParsedRequest,
    latency_class,
    load_body,
    session_id,
)

SUPPORTED_TOOLS = frozenset({"function", "custom", "namespace"})
"""Tools the model calls itself (the client runs them); every other type is a built-in tool."""
POOLING_KINDS: dict[str, ApiName] = {"embeddings": "embeddings", "score": "score",
                                     "rerank": "rerank"}  # fmt: skip


def _features(
    extracted: extract.Extracted,
    api: ApiName,
    headers: Mapping[str, str],
    policy: PolicyConfig,
    sequence: int,
    prefix: PrefixSettings | None = None,
    body: Mapping[str, Any] | None = None,
) -> RequestFeatures:
    """Routing features; with ``prefix``, the conversation's blocks and session id for the
    prefix index too (the same rendering as a chat body's, so the same prefixes match)."""
    prompt = session = None
    if prefix is not None:
        turns = [(str(m.get("role")), str(m.get("content") or "")) for m in extracted.messages]
        prompt = PromptBlocks.of(chat_prefix_text(turns), prefix)
        session = session_id(body or {}, headers, policy)
    task = feat.classify_task(
        extracted.task_text(), wants_json=extracted.wants_json, override=headers.get(TASK_HEADER)
    )
    return RequestFeatures(
        model=extracted.model,
        prompt_tokens=extracted.prompt_tokens(policy.chars_per_token),
        max_tokens=extracted.max_tokens,
        stream=extracted.stream,
        task=task,
        latency_class=latency_class(headers),
        sequence=sequence,
        api=api,
        prompt=prompt,
        session_id=session,
    )


def responses_body(raw: bytes) -> dict[str, Any]:
    """The body, checked for what the gateway refuses or needs before it reads any state."""
    body = load_body(raw)
    if body.get("background"):
        raise InvalidRequest(
            "Background mode is not supported by this gateway: it relays each response as it "
            "is generated and keeps no task to poll. Send the request without 'background' "
            "(stream it for long answers).",
            param="background",
        )
    if body.get("conversation") is not None:
        raise InvalidRequest(
            "'conversation' is not supported; continue a conversation with 'previous_response_id'.",
            param="conversation",
        )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for i, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind not in SUPPORTED_TOOLS:
            raise InvalidRequest(
                f"Built-in tool {kind!r} is not supported: the backends run no tools. Define "
                "a function tool and run it in your client.",
                param=f"tools[{i}].type",
            )
    for name in ("previous_response_id",):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"'{name}' must be a string.", param=name)
    extract.optional_bool(body, "store")
    return body


def responses(
    body: Mapping[str, Any],
    history: Sequence[Item],
    headers: Mapping[str, str],
    policy: PolicyConfig,
    sequence: int,
    prefix: PrefixSettings | None = None,
) -> tuple[ParsedRequest, list[Item]]:
    """The request to forward (the whole conversation as ``input``, no ``previous_response_id``,
    ``store`` off: the gateway keeps the state) and this turn's own input items."""
    extracted = extract.responses(body, history)
    own = extract.response_items(body["input"])
    upstream = {k: v for k, v in body.items() if k != "previous_response_id"}
    if history:
        upstream["input"] = [*history, *own]
    upstream["store"] = False
    features = _features(extracted, "responses", headers, policy, sequence, prefix, body)
    return ParsedRequest("responses", upstream, b"", features, True), own


def messages(
    raw: bytes,
    headers: Mapping[str, str],
    policy: PolicyConfig,
    sequence: int,
    prefix: PrefixSettings | None = None,
) -> ParsedRequest:
    body = load_body(raw)
    extracted = extract.anthropic_messages(body)
    features = _features(extracted, "messages", headers, policy, sequence, prefix, body)
    return ParsedRequest("messages", body, raw, features, True)


def pooling(
    kind: Kind, raw: bytes, headers: Mapping[str, str], policy: PolicyConfig, sequence: int
) -> ParsedRequest:
    """Embeddings, score, rerank: the longest input must fit a backend; one "output" token (the
    engine runs a prefill), streamed never."""
    body = load_body(raw)
    api = POOLING_KINDS[kind]
    inputs = extract.pooling(api, body, policy.chars_per_token)
    features = RequestFeatures(
        model=inputs.model,
        prompt_tokens=max(inputs.sizes, default=0),
        max_tokens=1,
        stream=False,
        latency_class=latency_class(headers),
        sequence=sequence,
        api=api,
    )
    return ParsedRequest(kind, body, raw, features, True)
