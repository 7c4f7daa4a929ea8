"""What a client sees of a backend's error answer.

- 4xx: the backend's own body (vLLM's validation messages are for the client), when it is an
  OpenAI-format error; anything else (an HTML page from a proxy, vLLM's bare ``{"error":
  "Unauthorized"}``) becomes one with the same status.
- 401/403: the backend refused *the gateway's* credentials (``access.upstream_auth``), which the
  client can do nothing about: 502 ``upstream_auth_failed``, and an error log line.
- 5xx: same status, the gateway's own body (a backend's 500 can carry exception text and
  internal paths); the backend's body is logged under the request id.
"""

from __future__ import annotations

import json
import logging

from quantroute.errors import openai_error_body

log = logging.getLogger("quantroute.proxy")
JSON = "application/json"
_LOGGED = 500


def _is_openai_error(data: bytes) -> bool:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def _body(message: str, error_type: str, code: str, request_id: str) -> bytes:
    body = openai_error_body(message, error_type, code=code, request_id=request_id)
    return json.dumps(body).encode()


def client_error(
    status: int, content_type: str, data: bytes, *, backend_id: str, request_id: str
) -> tuple[int, str, bytes]:
    """The (status, content type, body) to relay for a backend's answer of ``status`` >= 400."""
    excerpt = data[:_LOGGED].decode("utf-8", "replace")
    if status in (401, 403):
        log.error(
            "request %s: backend %s refused the gateway's credentials (HTTP %d): %s; "
            "check access.upstream_auth",
            request_id,
            backend_id,
            status,
            excerpt,
        )
        message = f"The backend refused the gateway's credentials (request id {request_id})."
        return 502, JSON, _body(message, "upstream_error", "upstream_auth_failed", request_id)
    if status >= 500:
        log.warning(
            "request %s: backend %s answered %d: %s", request_id, backend_id, status, excerpt
        )
        message = f"The backend failed (HTTP {status}); retry shortly (request id {request_id})."
        return status, JSON, _body(message, "upstream_error", "upstream_error", request_id)
    if content_type.startswith(JSON) and _is_openai_error(data):
        return status, content_type, data
    log.info("request %s: backend %s answered %d: %s", request_id, backend_id, status, excerpt)
    message = f"The backend rejected the request (HTTP {status}, request id {request_id})."
    return status, JSON, _body(message, "invalid_request_error", "upstream_rejected", request_id)
