"""The one edge where quantroute's errors become HTTP responses in OpenAI's error format."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from quantroute.errors import RequestError, openai_error_body

log = logging.getLogger("quantroute.server")


def error_response(status: int, message: str, error_type: str, code: str | None) -> JSONResponse:
    return JSONResponse(openai_error_body(message, error_type, code=code), status_code=status)


async def _request_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = (
        "not_found"
        if exc.status_code == 404
        else "method_not_allowed"
        if exc.status_code == 405
        else None
    )
    return error_response(exc.status_code, str(exc.detail), "invalid_request_error", code)


async def _validation_error(_: Request, exc: Exception) -> Response:
    return error_response(
        400, f"Invalid request: {exc}", "invalid_request_error", "invalid_request"
    )


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "Internal gateway error.", "server_error", "internal_error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
