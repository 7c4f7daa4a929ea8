"""The one error hierarchy of quantroute, mapped to HTTP at exactly one edge (``server/errors.py``),
and the one builder of OpenAI-format error bodies (:func:`openai_error_body`).

QuantrouteError
├── ConfigError              a config or matrix file is invalid (names file, field, problem)
│   ├── MatrixError          the capability matrix is missing, invalid or outdated
│   └── SuiteError           a workload suite file is unreadable or holds an invalid sample
├── RequestError             something a client request did wrong or that blocks it; has status
│   ├── InvalidRequest       400 invalid_request_error (bad JSON, missing fields, wrong types)
│   ├── ContextLengthExceeded 400 context_length_exceeded: no backend fits prompt + max_tokens
│   ├── ModelNotFound        404 model_not_found
│   ├── NoBackendAvailable   503 no backend can take the request now (carries per-backend reasons)
│   ├── QueueRefused         503 (or 429) the saturated group's queue is full / the wait ran out
│   ├── UpstreamUnavailable  502 every attempt to reach a backend failed before the first byte
│   ├── ResponseNotFound     404 a stored Responses API response is unknown, expired or deleted
│   ├── ConversationStoreUnavailable 503 the store of Responses API conversations cannot answer
│   ├── UpstreamTimedOut     504 a sent request got no answer in time (never retried)
│   └── BadUpstreamResponse  502 the answer was too large or could not be relayed
├── UpstreamFailure          an exchange with a backend failed (``outcome`` for passive health)
│   ├── UpstreamConnectError   not reached, or broke off before answering (retryable; mid-stream:
│   │                          the stream ends with an error event)
│   ├── UpstreamTimeout        no answer / no next chunk in time
│   ├── UpstreamTooLarge       an SSE event or a body over its cap
│   └── UpstreamProtocolError  an answer that cannot be relayed
├── ClientDisconnected       the client went away before the response started
├── KubeApiError             the Kubernetes API answered with an error (or garbage)
│   └── ResourceExpired      410 Gone: the watched resourceVersion is too old; list again
└── MissingExtra             a command needs an optional extra that is not installed
                             (``quantroute.extras.require``; the CLI prints it, exit 1)
"""

from __future__ import annotations

from collections.abc import Mapping


def openai_error_body(
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | int | None = None,
    **extra: object,
) -> dict[str, object]:
    """``{"error": {"message", "type", "param", "code", ...extra}}``: OpenAI's (and vLLM's) format."""
    error: dict[str, object] = {
        "message": message,
        "type": error_type,
        "param": param,
        "code": code,
        **extra,
    }
    return {"error": error}


class QuantrouteError(Exception):
    """Base of every error quantroute raises on purpose."""


class ConfigError(QuantrouteError):
    """A configuration file is invalid; the message names the file, the field and the problem."""


class MatrixError(ConfigError):
    """The capability matrix cannot be used."""


class SuiteError(ConfigError):
    """A workload suite file is unreadable or holds an invalid sample (names file and line)."""


class RequestError(QuantrouteError):
    """An error answered to the client in OpenAI's error format."""

    status: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, object]:
        return openai_error_body(self.message, self.error_type, param=self.param, code=self.code)


class InvalidRequest(RequestError):
    status = 400
    code = "invalid_request"


class ContextLengthExceeded(RequestError):
    status = 400
    code = "context_length_exceeded"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class NoBackendAvailable(RequestError):
    status = 503
    error_type = "service_unavailable"
    code = "no_backend_available"

    def __init__(
        self, message: str, *, reasons: Mapping[str, tuple[str, ...]], retry_after_s: int = 1
    ) -> None:
        super().__init__(message)
        self.reasons = dict(reasons)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    def body(self) -> dict[str, object]:
        backends = {k: list(v) for k, v in self.reasons.items()}
        return openai_error_body(
            self.message, self.error_type, param=self.param, code=self.code, backends=backends
        )

    def without_backends(self) -> dict[str, object]:
        """The body for callers who may not see backend names and their state."""
        return super().body()


class QueueRefused(RequestError):
    """Flow control gave up on a request: ``queue_full`` (refused or evicted by a request that
    outranks it) or ``queue_timeout`` (it waited ``max_wait_s``). 503 or 429 with Retry-After."""

    error_type = "service_unavailable"

    def __init__(self, message: str, *, code: str, status: int, retry_after_s: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after_s = retry_after_s
        if status == 429:
            self.error_type = "rate_limit_exceeded"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class UpstreamUnavailable(RequestError):
    status = 502
    error_type = "upstream_error"
    code = "upstream_unavailable"


class ResponseNotFound(RequestError):
    status = 404

    def __init__(self, response_id: str, *, param: str, code: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param=param)
        self.code = code


class ConversationStoreUnavailable(RequestError):
    status = 503
    error_type = "service_unavailable"
    code = "conversation_store_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class UpstreamTimedOut(RequestError):
    """504: a request that was sent got no answer in time (never retried: the backend may
    still be working on it)."""

    status = 504
    error_type = "upstream_error"
    code = "upstream_timeout"


class BadUpstreamResponse(RequestError):
    """502: the backend answered something the gateway will not relay (too large, malformed)."""

    status = 502
    error_type = "upstream_error"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class UpstreamFailure(QuantrouteError):
    """An exchange with a backend failed; ``outcome`` says what that shows about the backend
    (a :class:`~quantroute.resilience.outcomes.AttemptOutcome` value)."""

    outcome: str = "reset"
    retryable = False
    """True when the backend did no work that goes on (so another backend may be tried)."""


class UpstreamConnectError(UpstreamFailure):
    """The backend could not be reached, or the connection broke before an answer began: the
    backend did no work that goes on (a closed connection aborts a vLLM request). Retryable."""

    retryable = True

    def __init__(self, message: str, *, refused: bool = False, timed_out: bool = False) -> None:
        """``refused``: no connection (nothing sent); ``timed_out``: the connection was not made
        in time (nothing sent either, but a slow accept may be the gateway's own lag); else
        the connection broke before an answer began."""
        super().__init__(message)
        self.outcome = "connect_timeout" if timed_out else "connect_error" if refused else "reset"


class UpstreamTimeout(UpstreamFailure):
    """No answer (or no next chunk) in time. Never retried once the request was sent."""

    outcome = "timeout"


class UpstreamTooLarge(UpstreamFailure):
    """An SSE event or a non-streamed body beyond the configured cap."""

    outcome = "too_large"


class UpstreamProtocolError(UpstreamFailure):
    """An answer the gateway cannot relay (e.g. a header it cannot encode)."""

    outcome = "bad_response"


class ClientDisconnected(QuantrouteError):
    """The client went away before the response started."""


class KubeApiError(QuantrouteError):
    """The API server answered with an error (or garbage) instead of pods."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class ResourceExpired(KubeApiError):
    """410 Gone: the resourceVersion we watch from is too old; list again."""


class MissingExtra(QuantrouteError):
    """A command needs a package of an optional extra (``pyproject.toml``) that is not installed."""
