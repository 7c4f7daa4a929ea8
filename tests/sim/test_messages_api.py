"""``/v1/messages`` (Anthropic format) of one simulated backend, through the official client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anthropic
import httpx
import pytest

from quantroute.sim.fleet import SimFleet
from quantroute.sim.text import chat_prompt_tokens
from quantroute.testing.anthropic_replies import streamed_text, text_of

from .conftest import ANSWER_KEY

PROMPT = "Say hello."
ANSWER = ANSWER_KEY[PROMPT][1]
AnthropicFactory = Callable[[str], anthropic.AsyncAnthropic]


@pytest.fixture
async def anthropic_for() -> AsyncIterator[AnthropicFactory]:
    clients: list[anthropic.AsyncAnthropic] = []

    def make(url: str) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_non_stream_message_has_text_stop_reason_and_usage(
    anthropic_for: AnthropicFactory, fleet: SimFleet
) -> None:
    message = await anthropic_for(fleet.urls["awq"]).messages.create(
        model="llama3-8b-awq",
        system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=64,
    )
    assert message.id.startswith("chatcmpl-")
    assert [block.type for block in message.content] == ["text"]
    assert text_of(message) == ANSWER
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == chat_prompt_tokens(["Be brief.", PROMPT])
    assert message.usage.output_tokens == len(ANSWER.split())


async def test_content_blocks_and_system_blocks_make_the_prompt(
    anthropic_for: AnthropicFactory, fleet: SimFleet
) -> None:
    message = await anthropic_for(fleet.urls["awq"]).messages.create(
        model="llama3-8b-awq",
        system=[{"type": "text", "text": "Be brief."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
        max_tokens=64,
    )
    assert text_of(message) == ANSWER
    assert message.usage.input_tokens == chat_prompt_tokens(["Be brief.", "Hi", "Hello.", PROMPT])


async def test_stream_sends_anthropics_event_types(
    anthropic_for: AnthropicFactory, fleet: SimFleet
) -> None:
    stream = await anthropic_for(fleet.urls["awq"]).messages.create(
        model="llama3-8b-awq",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=64,
        stream=True,
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(deltas),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert streamed_text(events) == ANSWER
    start, end = events[0], events[-2]
    assert start.type == "message_start" and end.type == "message_delta"
    assert start.message.usage.input_tokens == chat_prompt_tokens([PROMPT])
    assert start.message.usage.output_tokens == 0
    assert end.usage.output_tokens == len(deltas)
    assert end.delta.stop_reason == "end_turn"


async def test_max_tokens_stops_with_max_tokens(
    anthropic_for: AnthropicFactory, fleet: SimFleet
) -> None:
    message = await anthropic_for(fleet.urls["awq"]).messages.create(
        model="llama3-8b-awq", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5


async def test_errors_come_in_anthropics_envelope(
    anthropic_for: AnthropicFactory, fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await anthropic_for(fleet.urls["awq"]).messages.create(
            model="nope", messages=[{"role": "user", "content": PROMPT}], max_tokens=8
        )
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "NotFoundError",
            "message": "The model `nope` does not exist. Valid aliases: llama3-8b-awq.",
        },
    }
    # a body that fails validation gets vLLM's OpenAI-format 400, as vLLM 0.32 answers it
    reply = await http.post(fleet.urls["awq"] + "/v1/messages", json={"model": "llama3-8b-awq"})
    assert reply.status_code == 400 and "error" in reply.json() and "type" not in reply.json()
