"""Errors on /v1/messages: Anthropic's envelope for the gateway's errors and translated ones."""

from __future__ import annotations

import json

import pytest

from quantroute.apis import anthropic_errors


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (404, "not_found_error"), (429, "rate_limit_error"),
     (502, "api_error"), (503, "overloaded_error"), (418, "invalid_request_error"),
     (599, "api_error")],
)  # fmt: skip
def test_error_type_follows_the_status(status: int, kind: str) -> None:
    assert anthropic_errors.body(status, "m") == {
        "type": "error",
        "error": {"type": kind, "message": "m"},
    }


def test_openai_format_bodies_are_translated() -> None:
    openai_body = {"error": {"message": "1 validation error", "type": "Bad Request",
                             "param": "max_tokens", "code": 400}}  # fmt: skip
    out = json.loads(anthropic_errors.translate(400, json.dumps(openai_body).encode()))
    assert out == {"type": "error", "error": {"type": "invalid_request_error",
                                              "message": "1 validation error"}}  # fmt: skip
    detail = json.loads(anthropic_errors.translate(404, b'{"detail": "Not Found"}'))
    assert detail["error"] == {"type": "not_found_error", "message": "Not Found"}
    text = json.loads(anthropic_errors.translate(502, b"Bad Gateway"))
    assert text["error"] == {"type": "api_error", "message": "Bad Gateway"}


def test_anthropic_bodies_pass_unchanged() -> None:
    raw = b'{"type":"error","error":{"type":"NotFoundError","message":"x"}}'
    assert anthropic_errors.translate(404, raw) == raw
