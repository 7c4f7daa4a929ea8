"""Every route × {no key, wrong key, revoked key, key without access, admin key}: the status and
the OpenAI-format body; the logs never show a key; vLLM only ever sees the gateway's own key."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .stack import (
    ADMIN,
    BACKEND_KEY,
    OTHER,
    REVOKED,
    USER,
    WRONG,
    AllRecords,
    Stack,
    access_stack,
    no_key_in,
)

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
CHAT = {"model": "auto", "messages": HELLO, "max_tokens": 4}
COMPLETION = {"model": "auto", "prompt": "hello", "max_tokens": 4}
RESPONSE = {"model": "auto", "input": "hello", "max_output_tokens": 4}
MESSAGE = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
CALLERS = {"none": None, "wrong": WRONG, "revoked": REVOKED, "no-access": OTHER, "admin": ADMIN}

# route -> (method, body, expected status per caller)
ROUTES: dict[str, tuple[str, dict[str, Any] | None, dict[str, int]]] = {
    "/v1/chat/completions": ("POST", CHAT, {"no-access": 403, "admin": 200}),
    "/chat/completions": ("POST", CHAT, {"no-access": 403, "admin": 200}),
    "/v1/completions": ("POST", COMPLETION, {"no-access": 403, "admin": 200}),
    "/completions": ("POST", COMPLETION, {"no-access": 403, "admin": 200}),
    "/v1/models": ("GET", None, {"no-access": 200, "admin": 200}),
    "/models": ("GET", None, {"no-access": 200, "admin": 200}),
    "/v1/route/explain": ("POST", CHAT, {"no-access": 403, "admin": 200}),
    "/admin/backends": ("GET", None, {"no-access": 403, "admin": 200}),
    "/admin/access": ("GET", None, {"no-access": 403, "admin": 200}),
    "/metrics": ("GET", None, {"no-access": 403, "admin": 200}),
    "/v1/responses": ("POST", RESPONSE, {"no-access": 403, "admin": 200}),
    "/v1/responses/resp_0123": ("GET", None, {"no-access": 404, "admin": 404}),
    "/v1/messages": ("POST", MESSAGE, {"no-access": 403, "admin": 200}),
    "/no/such/route": ("GET", None, {"no-access": 404, "admin": 404}),
}
ANTHROPIC = {"/v1/messages"}
PUBLIC = ("/health", "/ready", "/openapi.json")


@pytest.fixture(scope="module")
def logged() -> Iterator[AllRecords]:
    handler = AllRecords()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture(scope="module")
def stack(logged: AllRecords) -> Iterator[Stack]:
    with access_stack({"decision_header": "admin"}) as running:
        yield running


def expected(route: str, caller: str) -> int:
    per_caller = ROUTES[route][2]
    return per_caller.get(caller, 401)


def call(stack: Stack, key: str | None, route: str) -> httpx.Response:
    method, body, _ = ROUTES[route]
    with stack.http(key) as http:
        return http.request(method, route, json=body)


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_route_by_caller(stack: Stack, route: str, caller: str) -> None:
    response = call(stack, CALLERS[caller], route)
    status = expected(route, caller)
    assert response.status_code == status, response.text
    rid = response.headers["x-request-id"]
    if status >= 400 and route in ANTHROPIC:  # Anthropic's clients get Anthropic's format
        body = response.json()
        assert body["type"] == "error" and body["error"]["message"], body
        expected_type = {401: "authentication_error", 403: "permission_error"}[status]
        assert body["error"]["type"] == expected_type
    elif status >= 400:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= error.keys() and error["message"]
        assert error["request_id"] == rid
        code = {401: "invalid_api_key", 404: "not_found"}.get(status)
        if route.startswith("/v1/responses/") and status == 404:
            code = "response_not_found"
        if code:
            assert error["code"] == code
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
            if caller == "revoked":
                assert "revoked" in error["message"]
        if status == 403:
            assert error["code"] in ("model_not_allowed", "insufficient_permissions")
    assert not no_key_in(response.text) and not no_key_in(str(response.headers))


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("route", PUBLIC)
def test_public_routes_answer_everyone(stack: Stack, route: str, caller: str) -> None:
    with stack.http(CALLERS[caller]) as http:
        response = http.get(route)
    assert response.status_code == 200, response.text
    assert "x-request-id" in response.headers


def test_ready_does_not_name_backends_to_anonymous_callers(stack: Stack) -> None:
    with stack.http(None) as http:
        body = http.get("/ready").json()
    assert body == {
        "ready": True,
        "draining": False,
        "fresh_backends": 3,
        "metrics_outage": False,
        "metrics_outage_mode": "fail_open",
    }
    with stack.http(ADMIN) as http:  # a public route: keys are not looked at, so no names
        assert http.get("/ready").json()["fresh_backends"] == 3


def test_models_lists_what_the_key_may_use(stack: Stack) -> None:
    ids = {m.id for m in stack.client(OTHER).models.list()}
    assert "premium" in ids and "auto" not in ids
    assert {"auto", "premium"} <= {m.id for m in stack.client(ADMIN).models.list()}


def test_a_key_may_pin_a_backend_of_its_group_but_not_of_another(stack: Stack) -> None:
    assert (
        stack.client(OTHER)
        .chat.completions.create(model="premium-model", messages=HELLO, max_tokens=2)
        .choices
    )
    with pytest.raises(openai.PermissionDeniedError):
        stack.client(USER).chat.completions.create(
            model="premium-model", messages=HELLO, max_tokens=2
        )


def test_openai_client_errors_map_to_its_exception_types(stack: Stack) -> None:
    for key, error in ((WRONG, openai.AuthenticationError), (REVOKED, openai.AuthenticationError)):
        with pytest.raises(error) as raised:
            stack.client(key).chat.completions.create(model="auto", messages=HELLO, max_tokens=4)
        assert raised.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        stack.client(OTHER).chat.completions.create(model="auto", messages=HELLO, max_tokens=4)
    with stack.client(USER).chat.completions.create(
        model="auto", messages=HELLO, max_tokens=4, stream=True
    ) as answer:
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in answer)


def test_decision_header_only_for_admin_keys(stack: Stack) -> None:
    user = stack.client(USER).chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, max_tokens=4
    )
    admin = stack.client(ADMIN).chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, max_tokens=4
    )
    assert "x-quantroute-decision" not in user.headers
    assert "x-quantroute-decision" in admin.headers


def test_backends_never_see_a_client_key_and_logs_never_show_one(
    stack: Stack, logged: AllRecords
) -> None:
    for key in (USER, ADMIN):
        stack.client(key).chat.completions.create(model="auto", messages=HELLO, max_tokens=4)
        stack.client(key).completions.create(model="auto", prompt="hello", max_tokens=4)
    seen = stack.authorizations()
    assert seen, "the simulated vLLM servers received nothing"
    assert set(seen) == {f"Bearer {BACKEND_KEY}"}
    text = "\n".join(logged.lines)
    assert logged.lines, "nothing was logged: the capture is not working"
    assert no_key_in(text) == []


def test_without_backend_credentials_a_backend_gets_no_authorization_at_all() -> None:
    with access_stack(backend_key=None) as stack:
        stack.client(USER).chat.completions.create(model="auto", messages=HELLO, max_tokens=4)
        stack.client(ADMIN).chat.completions.create(
            model="auto", messages=HELLO, max_tokens=4, stream=True
        ).close()
        seen = stack.authorizations()
    assert seen and set(seen) == {None}
