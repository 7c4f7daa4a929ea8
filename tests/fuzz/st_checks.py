"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests/fuzz/st_checks.py): every 4xx/5xx body in
OpenAI's error format, with the request id of the response."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


def openai_error_problems(status: int, body: Any) -> list[str]:
    """What is wrong with an error response's body, against OpenAI's format (empty: nothing)."""
    if status < 400:
        return []
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return [f"{status}: body is not {{'error': {{...}}}}: {str(body)[:200]}"]
    error = body["error"]
    problems = [
        f"{status}: error.{k} missing"
        for k in ("message", "type", "param", "code")
        if k not in error
    ]
    if not isinstance(error.get("message"), str) or not error.get("message"):
        problems.append(f"{status}: error.message is not a non-empty string")
    return problems


@schemathesis.check
def openai_error_format(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.content[:200]!r}"
        ) from None
    problems = openai_error_problems(response.status_code, body)
    if problems:
        raise AssertionError("; ".join(problems))
    if body["error"].get("request_id") != response.headers.get("x-request-id", [None])[0]:
        raise AssertionError("error.request_id differs from the x-request-id header")
    return None
