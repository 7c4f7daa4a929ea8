"""The one edge where quantroute's errors become HTTP responses in OpenAI's error format.

Every error body carries the request's id (``error.request_id``, also in ``x-request-id``), so a
client can quote it and an operator find the log lines with the details; bodies never carry
backend URLs or exception text. The per-backend reasons of a 503 are shown only to callers who
may see routing decisions (``access.decision_header``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from quantroute.access.control import AccessControl
from quantroute.access.keys import OPEN
from quantroute.errors import NoBackendAvailable, RequestError, openai_error_body

log = logging.getLogger("quantroute.server")


def _state(request: Request) -> dict[str, Any]:
    state: dict[str, Any] = request.scope.get("state") or {}
    return state


def _with_id(request: Request, body: dict[str, object]) -> dict[str, object]:
    rid = _state(request).get("request_id")
    error = body.get("error")
    if rid and isinstance(error, dict):
        error["request_id"] = rid
    return body


def error_response(
    request: Request, status: int, message: str, error_type: str, code: str | None
) -> JSONResponse:
    body = _with_id(request, openai_error_body(message, error_type, code=code))
    return JSONResponse(body, status_code=status)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return await request_error(request, exc)


async def request_error(request: Request, exc: RequestError) -> Response:
    """A :class:`RequestError` as its HTTP answer (also the proxy routes' own edge's)."""
    body = exc.body()
    if isinstance(exc, NoBackendAvailable):
        access: AccessControl = request.app.state.access
        if not access.sees_decision(_state(request).get("principal", OPEN)):
            body = exc.without_backends()
    return JSONResponse(_with_id(request, body), status_code=exc.status, headers=exc.headers())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = (
        "not_found"
        if exc.status_code == 404
        else "method_not_allowed"
        if exc.status_code == 405
        else None
    )
    return error_response(request, exc.status_code, str(exc.detail), "invalid_request_error", code)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    where = "; ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:3])
    log.info("request %s: invalid: %s", _state(request).get("request_id"), exc)
    return error_response(
        request,
        400,
        f"Invalid request at {where or 'the body'}.",
        "invalid_request_error",
        "invalid_request",
    )


async def unexpected(request: Request, exc: Exception) -> Response:
    """The last resort (outside the access middleware): log the details, answer without them."""
    rid = _state(request).get("request_id", "")
    log.exception("request %s: unexpected error", rid, exc_info=exc)
    body = _with_id(
        request, openai_error_body("Internal gateway error.", "server_error", code="internal_error")
    )
    return Response(
        json.dumps(body),
        status_code=500,
        media_type="application/json",
        headers={"x-request-id": rid} if rid else None,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, unexpected)
