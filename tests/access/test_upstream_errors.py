"""What a client sees of a backend's error answers (proxy/upstream_errors.py)."""

from __future__ import annotations

import json

import pytest

from quantroute.proxy.upstream_errors import client_error

VLLM_400 = json.dumps(
    {
        "error": {
            "message": "max_tokens is too large",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
).encode()


@pytest.mark.parametrize(
    ("status", "ctype", "data", "want_status", "want_code", "passes"),
    [
        (400, "application/json", VLLM_400, 400, 400, True),
        (404, "text/html", b"<html>not here</html>", 404, "upstream_rejected", False),
        (401, "application/json", b'{"error": "Unauthorized"}', 502, "upstream_auth_failed", False),
        (403, "application/json", VLLM_400, 502, "upstream_auth_failed", False),
        (
            500,
            "application/json",
            b'{"error": {"message": "Traceback: /opt/vllm/x.py"}}',
            500,
            "upstream_error",
            False,
        ),
        (503, "text/plain", b"overloaded", 503, "upstream_error", False),
    ],
)
def test_client_error(
    status: int, ctype: str, data: bytes, want_status: int, want_code: object, passes: bool
) -> None:
    got_status, got_ctype, body = client_error(
        status, ctype, data, backend_id="b1", request_id="req_1"
    )
    assert got_status == want_status and got_ctype.startswith("application/json")
    assert (body == data) is passes
    error = json.loads(body)["error"]
    assert error["code"] == want_code
    if not passes:
        assert error["request_id"] == "req_1" and "b1" not in error["message"]
        assert "Traceback" not in error["message"] and "Unauthorized" not in error["message"]
