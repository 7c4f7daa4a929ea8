"""Errors on ``/v1/messages`` in Anthropic's format: ``{"type": "error", "error": {"type",
"message"}}``, the error type following the HTTP status as Anthropic's API documents it.

The gateway's own errors are built here; a backend's OpenAI-format error body (vLLM answers a
body that fails validation on ``/v1/messages`` in OpenAI's format) is translated, so a client of
that route only ever sees one format.
"""

from __future__ import annotations

import json
from typing import Any

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def translate(status: int, raw: bytes) -> bytes:
    """A backend's error body in Anthropic's format (unchanged when it already is)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("type") == "error":
        return raw
    message = raw.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        elif isinstance(data.get("detail"), str):
            message = data["detail"]
    return json.dumps(body(status, message), separators=(",", ":")).encode()
