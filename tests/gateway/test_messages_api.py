"""The Anthropic Messages API through the gateway to the simulator, through the official
``anthropic`` client."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic.types import MessageParam

from quantroute.testing.anthropic_replies import streamed_text, text_of
from quantroute.testing.fake_backend import wait_until

from .api_stack import ANSWER_KEY, EMBED, GENERATIVE, ApiStack, api_stack
from .engine_waits import aborts_when_idle, wait_for_abort

__all__ = ["api_stack"]
PATH = "/v1/messages"
HELLO: list[MessageParam] = [{"role": "user", "content": "Say hello."}]


def test_non_stream_message_is_routed_answered_and_accounted(api_stack: ApiStack) -> None:
    before = api_stack.metric("quantroute_completion_tokens_total")
    raw = api_stack.anthropic().messages.with_raw_response.create(
        model="auto", system="Be brief.", messages=HELLO, max_tokens=64
    )
    message = raw.parse()
    backend = raw.headers["x-quantroute-backend"]
    assert backend in GENERATIVE
    assert text_of(message) == ANSWER_KEY["Say hello."][1]
    assert message.stop_reason == "end_turn"
    sent = api_stack.received(backend, PATH)[-1]
    assert sent["system"] == "Be brief." and sent["messages"] == HELLO
    assert sent["model"] in ("llama3-8b-awq", "qwen25-7b-gptq")  # the backend's served name
    assert wait_until(
        lambda: (
            api_stack.metric("quantroute_completion_tokens_total")
            == before + message.usage.output_tokens
        )
    )


def test_stream_relays_anthropic_events_and_accounts_their_usage(api_stack: ApiStack) -> None:
    before = api_stack.metric("quantroute_prompt_tokens_total")
    stream = api_stack.anthropic().messages.create(
        model="auto", messages=HELLO, max_tokens=64, stream=True
    )
    events = list(stream)
    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    assert [e.type for e in events][-2:] == ["message_delta", "message_stop"]
    text = streamed_text(events)
    assert text == ANSWER_KEY["Say hello."][1]
    start = events[0]
    assert start.type == "message_start"
    assert wait_until(
        lambda: (
            api_stack.metric("quantroute_prompt_tokens_total")
            == before + start.message.usage.input_tokens
        )
    )


def _anthropic_error(reply: httpx.Response) -> dict[str, str]:
    body = reply.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    error: dict[str, str] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_request_error"),
        (b'"text"', 400, "invalid_request_error"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}]}', 400,
         "invalid_request_error"),
        (b'{"model": "auto", "max_tokens": 5, "messages": []}', 400, "invalid_request_error"),
        (b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}',
         400, "invalid_request_error"),
        (b'{"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}',
         404, "not_found_error"),
        (b'{"model": "auto", "max_tokens": 100000, "messages": [{"role": "user", "content": "x"}]}',
         400, "invalid_request_error"),
    ],
)  # fmt: skip
def test_bad_input_gets_an_anthropic_error(
    api_stack: ApiStack, body: bytes, status: int, kind: str
) -> None:
    reply = httpx.post(
        api_stack.url + PATH, content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == status
    assert _anthropic_error(reply)["type"] == kind


def test_the_official_client_sees_anthropic_errors(api_stack: ApiStack) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        api_stack.anthropic().messages.create(model="nope", messages=HELLO, max_tokens=8)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):  # no backend of 'embed' speaks Messages
        api_stack.anthropic().messages.create(model="embed", messages=HELLO, max_tokens=8)
    assert not api_stack.received(EMBED, PATH)


def test_a_backend_error_in_openai_format_reaches_the_client_in_anthropic_format(
    api_stack: ApiStack,
) -> None:
    # the simulator (as vLLM) validates `temperature`, which the gateway lets through
    body = {"model": "auto", "max_tokens": 8, "temperature": "hot", "messages": HELLO}
    reply = httpx.post(api_stack.url + PATH, json=body)
    assert reply.status_code == 400
    assert _anthropic_error(reply)["type"] == "invalid_request_error"


def test_a_client_that_leaves_mid_stream_stops_the_backend(api_stack: ApiStack) -> None:
    body = {"model": "auto", "max_tokens": 6000, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to three thousand."}]}  # fmt: skip
    aborted = {b: aborts_when_idle(api_stack.fleet.urls[b]) for b in GENERATIVE}
    with httpx.stream("POST", api_stack.url + PATH, json=body, timeout=30) as reply:
        backend = reply.headers["x-quantroute-backend"]
        lines = reply.iter_lines()
        assert next(lines) == "event: message_start"
        for _ in range(10):
            next(lines)
    # 6000 tokens take the backend 24 s at this time scale: an abort is the only way to stop
    # sooner (on a loaded machine the simulator has been seen to notice a closed connection
    # several seconds late, on chat completions as well)
    wait_for_abort(api_stack.fleet.urls[backend], aborted[backend])
