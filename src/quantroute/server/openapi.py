"""The OpenAPI 3.1 document of the gateway's public routes (``GET /openapi.json``).

Written by hand because the proxy routes are plain Starlette routes whose bodies pass through:
it describes what the gateway itself checks (and that everything else goes on to vLLM), the
errors it answers in OpenAI's format, the rate-limit headers, and Bearer authentication. Users'
tooling (client generators, API gateways) and the fuzzing (schemathesis) read it.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

_ERROR: Json = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
                "request_id": {"type": "string"},
            },
        }
    },
}

_MESSAGE: Json = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string"},
        "content": {"type": ["string", "array", "null"], "items": {"type": "object"}},
        "name": {"type": "string"},
    },
}

_COMMON: Json = {
    "model": {"type": "string", "minLength": 1, "description": "a group, or a served model"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
    },
    "n": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
}

_CHAT_REQUEST: Json = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "response_format": {"type": ["object", "null"]},
    },
    "additionalProperties": True,
}

_COMPLETION_REQUEST: Json = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **_COMMON,
        "prompt": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                },
            ]
        },
    },
    "additionalProperties": True,
}

_COMPLETION_RESPONSE: Json = {
    "type": "object",
    "required": ["id", "object", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": {"type": ["object", "null"]},
    },
}

_RATE_HEADERS: Json = {
    name: {"schema": {"type": "string"}, "description": description}
    for name, description in {
        "x-request-id": "the request's id; error bodies carry it too",
        "x-ratelimit-limit-requests": "requests per window of this key",
        "x-ratelimit-remaining-requests": "requests left in the window",
        "x-ratelimit-reset-requests": "until the requests window resets (e.g. 59.2s)",
        "x-ratelimit-limit-tokens": "tokens per window of this key",
        "x-ratelimit-remaining-tokens": "tokens left in the window",
        "x-ratelimit-reset-tokens": "until the tokens window resets",
    }.items()
}


def _error(description: str) -> Json:
    return {
        "description": description,
        "headers": _RATE_HEADERS,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_ERRORS: Json = {
    "400": _error("invalid request, or context length exceeded"),
    "401": _error("no API key, a wrong one or a revoked one (invalid_api_key)"),
    "403": _error("the key may not use this model"),
    "404": _error("unknown model"),
    "413": _error("request body too large"),
    "415": _error("Content-Type is not application/json"),
    "422": _error("rejected by the backend's own validation"),
    "429": _error("rate limit reached (Retry-After, x-ratelimit-*)"),
    "502": _error("no backend could be reached"),
    "503": _error("no backend can take the request now, or quotas cannot be checked"),
}


def _proxy(summary: str, request: str) -> Json:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}
                },
            },
            "responses": {
                "200": {
                    "description": "the backend's answer (JSON, or server-sent events with stream)",
                    "headers": _RATE_HEADERS,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Completion"}},
                        "text/event-stream": {
                            "schema": {
                                "description": "one server-sent event; data: a chunk as JSON, "
                                "then [DONE]",
                                "type": "object",
                                "required": ["data"],
                                "properties": {
                                    "data": {"type": "string"},
                                    "event": {"type": "string"},
                                },
                            }
                        },
                    },
                },
                **_ERRORS,
            },
        }
    }


def openapi_document(version: str, models: list[str] | None = None) -> Json:
    """The document; ``models``: the groups and served models to list for ``model``."""
    schemas: Json = {
        "Error": _ERROR,
        "ChatCompletionRequest": _with_models(_CHAT_REQUEST, models),
        "CompletionRequest": _with_models(_COMPLETION_REQUEST, models),
        "Completion": _COMPLETION_RESPONSE,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quantroute",
            "version": version,
            "description": "OpenAI-compatible routing gateway for vLLM fleets. Fields not listed "
            "are passed to the chosen backend unchanged.",
        },
        "paths": {
            "/v1/chat/completions": _proxy("Chat completion, routed", "ChatCompletionRequest"),
            "/v1/completions": _proxy("Text completion, routed", "CompletionRequest"),
            "/v1/models": {
                "get": {
                    "summary": "The groups and served models this key may use",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "model list",
                            "headers": _RATE_HEADERS,
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _ERRORS["401"],
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "liveness",
                    "security": [],
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/ready": {
                "get": {
                    "summary": "readiness: at least one backend with fresh metrics",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "no fresh backend"},
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
    }


def _with_models(request: Json, models: list[str] | None) -> Json:
    if not models:
        return request
    model = {**request["properties"]["model"], "enum": sorted(set(models))}
    return {**request, "properties": {**request["properties"], "model": model}}
