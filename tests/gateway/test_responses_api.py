"""The Responses API through the gateway to the simulator, through the official OpenAI client."""

from __future__ import annotations

from typing import cast

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam

from quantroute.testing.fake_backend import wait_until

from .api_stack import ANSWER_KEY, EMBED, GENERATIVE, ApiStack, api_stack
from .engine_waits import aborts_when_idle, wait_for_abort

__all__ = ["api_stack"]
PATH = "/v1/responses"


def test_non_stream_response_is_routed_answered_and_accounted(api_stack: ApiStack) -> None:
    client = api_stack.openai()
    before = api_stack.metric("quantroute_completion_tokens_total")
    raw = client.responses.with_raw_response.create(
        model="auto", instructions="Be brief.", input="Say hello."
    )
    response = raw.parse()
    backend = raw.headers["x-quantroute-backend"]
    assert backend in GENERATIVE  # never the embedding backend of the same group
    assert response.output_text == ANSWER_KEY["Say hello."][1]
    usage = response.usage
    assert usage is not None
    sent = api_stack.received(backend, PATH)[-1]
    assert sent["input"] == "Say hello." and sent["instructions"] == "Be brief."
    assert sent["store"] is False  # the gateway keeps the conversation, not the backend
    assert "previous_response_id" not in sent
    assert wait_until(
        lambda: (
            api_stack.metric("quantroute_completion_tokens_total") == before + usage.output_tokens
        )
    )


def test_stream_relays_typed_events_and_accounts_usage_from_the_final_event(
    api_stack: ApiStack,
) -> None:
    before = api_stack.metric("quantroute_prompt_tokens_total")
    events = list(
        api_stack.openai().responses.create(model="auto", input="Say hello.", stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == ANSWER_KEY["Say hello."][1]
    final = events[-1]
    assert final.type == "response.completed"
    usage = final.response.usage
    assert usage is not None
    assert wait_until(
        lambda: api_stack.metric("quantroute_prompt_tokens_total") == before + usage.input_tokens
    )


def _turn(
    client: openai.OpenAI, text: str, previous: str | None, *, stream: bool = False
) -> tuple[str, str, str]:
    """(response id, output text, backend) of one turn."""
    after = openai.omit if previous is None else previous
    if stream:
        with client.responses.with_streaming_response.create(
            model="auto", input=text, stream=True, previous_response_id=after
        ) as raw:
            backend = raw.headers["x-quantroute-backend"]
            events = list(raw.parse())
        final = events[-1]
        assert final.type == "response.completed"
        return final.response.id, final.response.output_text, backend
    whole = client.responses.with_raw_response.create(
        model="auto", input=text, previous_response_id=after
    )
    response = whole.parse()
    return response.id, response.output_text, whole.headers["x-quantroute-backend"]


def test_three_turns_on_different_backends_each_see_the_whole_conversation(
    api_stack: ApiStack,
) -> None:
    client = api_stack.openai()
    first, answer1, on1 = _turn(client, "Say hello.", None)
    second, answer2, on2 = _turn(client, "Name a colour.", first, stream=True)
    third, answer3, on3 = _turn(client, "And a number?", second)
    assert on1 != on2 and on2 != on3  # round robin: no turn stays where the last one ran
    assert answer3 == ANSWER_KEY["And a number?"][1]
    sent = api_stack.received(on3, PATH)[-1]
    assert "previous_response_id" not in sent and sent["store"] is False
    said = [
        (item["role"], item["content"] if isinstance(item["content"], str)
         else "".join(part["text"] for part in item["content"]))
        for item in sent["input"]
    ]  # fmt: skip
    assert said == [
        ("user", "Say hello."),
        ("assistant", answer1),
        ("user", "Name a colour."),
        ("assistant", answer2),
        ("user", "And a number?"),
    ]
    retrieved = client.responses.retrieve(third)
    assert retrieved.output_text == answer3
    assert retrieved.previous_response_id == second  # as the client sent it, not as forwarded


def test_retrieve_and_delete_answer_from_the_gateway(api_stack: ApiStack) -> None:
    client = api_stack.openai()
    created = client.responses.create(model="auto", input="Say hello.")
    assert client.responses.retrieve(created.id).output_text == created.output_text
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.create(model="auto", input="again", previous_response_id=created.id)
    assert isinstance(gone.value.body, dict)
    assert gone.value.body["param"] == "previous_response_id"


def test_store_false_is_honoured(api_stack: ApiStack) -> None:
    client = api_stack.openai()
    created = client.responses.create(model="auto", input="Say hello.", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="auto", input="again", previous_response_id=created.id)


def test_unsupported_parts_of_the_api_get_a_clear_error(api_stack: ApiStack) -> None:
    client = api_stack.openai()
    with pytest.raises(openai.BadRequestError) as background:
        client.responses.create(model="auto", input="x", background=True)
    assert isinstance(background.value.body, dict)
    assert background.value.body["param"] == "background"
    assert "background" in background.value.message
    with pytest.raises(openai.BadRequestError) as tools:
        client.responses.create(model="auto", input="x", tools=[{"type": "web_search_preview"}])
    assert isinstance(tools.value.body, dict)
    assert tools.value.body["param"] == "tools[0].type"
    function = cast(
        FunctionToolParam, {"type": "function", "name": "f", "parameters": {"type": "object"}}
    )
    assert client.responses.create(model="auto", input="Say hello.", tools=[function]).output_text


def test_a_group_without_a_generative_backend_refuses_responses(api_stack: ApiStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        api_stack.openai().responses.create(model="embed", input="Say hello.")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"
    assert not api_stack.received(EMBED, PATH)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "auto"}', "input"),
        (b'{"model": "auto", "input": 7}', "input"),
        (b'{"model": "auto", "input": [{"role": "robot", "content": "x"}]}', "input[0].role"),
        (b'{"model": "auto", "input": "x", "max_output_tokens": -1}', "max_output_tokens"),
        (b'{"model": "auto", "input": "x", "previous_response_id": 5}', "previous_response_id"),
        (b'{"input": "x"}', "model"),
    ],
)
def test_bad_input_gets_an_openai_error(
    api_stack: ApiStack, body: bytes, param: str | None
) -> None:
    reply = httpx.post(
        api_stack.url + PATH, content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_previous_response_is_a_404(api_stack: ApiStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        api_stack.openai().responses.create(
            model="auto", input="x", previous_response_id="resp_nobody"
        )
    assert isinstance(caught.value.body, dict)
    body = dict(caught.value.body)
    assert body.pop("request_id") == caught.value.response.headers["x-request-id"]
    assert body == {
        "message": "Response with id 'resp_nobody' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }


def test_a_client_that_leaves_mid_stream_stops_the_backend(api_stack: ApiStack) -> None:
    body = {"model": "auto", "input": "Count to three thousand.", "stream": True,
            "max_output_tokens": 6000, "ignore_eos": True}  # fmt: skip
    aborted = {b: aborts_when_idle(api_stack.fleet.urls[b]) for b in GENERATIVE}
    with httpx.stream("POST", api_stack.url + PATH, json=body, timeout=30) as reply:
        backend = reply.headers["x-quantroute-backend"]
        lines = reply.iter_lines()
        assert next(lines) == "event: response.created"
        for _ in range(10):
            next(lines)
    # 6000 tokens take the backend 24 s at this time scale: an abort is the only way to stop
    # sooner (on a loaded machine the simulator has been seen to notice a closed connection
    # several seconds late, on chat completions as well)
    wait_for_abort(api_stack.fleet.urls[backend], aborted[backend])
    assert wait_until(
        lambda: api_stack.metric("quantroute_backend_in_flight_requests", backend=backend) == 0, 10
    )


class _Abandoned(BaseException):
    """Not an ``Exception``: what the store's own error handling lets through (as a cancelled
    task's ``CancelledError`` would be)."""


def test_an_answer_whose_storing_is_abandoned_is_accounted_all_the_same(
    api_stack: ApiStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Responses API answer is stored before it is sent, and accounted once it is sent. When
    storing it is abandoned, the answer is never sent (the client gets a 500), and the request
    is accounted all the same: the attempt counted, no lease or in-flight request left."""
    store = api_stack.gateway.app.state.conversations

    async def abandoned(record: object) -> None:
        raise _Abandoned()

    before = api_stack.metric("quantroute_requests_total", status="200")
    monkeypatch.setattr(store, "put", abandoned)  # the stack is the module's: put back after
    r = httpx.post(api_stack.url + "/v1/responses", json={"model": "auto", "input": "Say hello."})
    assert r.status_code == 500
    assert wait_until(
        lambda: api_stack.metric("quantroute_requests_total", status="200") == before + 1
    )
    rows = httpx.get(api_stack.url + "/admin/backends").json()["backends"]
    assert all(row["in_flight"]["requests"] == 0 for row in rows)
