"""What one upstream attempt says about the backend, as a typed value.

A client's mistake is not a backend failure: 4xx answers and clients that go away say nothing
about the backend. 429 and 503 are backpressure (the backend is alive and asks for less), not
breakage. Connect errors, resets, other 5xx and timeouts are failures.
"""

from __future__ import annotations

from enum import StrEnum


class AttemptOutcome(StrEnum):
    OK = "ok"
    CONNECT_ERROR = "connect_error"
    """Refused or unreachable before the request was sent: the backend did no work."""
    CONNECT_TIMEOUT = "connect_timeout"
    """The connection was not made in time: nothing sent, but unlike a refusal it may be the
    gateway's own lag under load, so it does not count as proof the backend is gone."""
    RESET = "reset"
    """The connection broke after the request was sent (mid-answer or before the first byte)."""
    SERVER_ERROR = "server_error"
    """5xx other than 503."""
    TIMEOUT = "timeout"
    BACKPRESSURE = "backpressure"
    """429 or 503: alive, asking for less."""
    CLIENT_ERROR = "client_error"
    """4xx other than 429: the request was wrong."""
    CLIENT_GONE = "client_gone"
    """The client disconnected: nothing learnt about the backend."""
    TOO_LARGE = "too_large"
    """An SSE event or a body over its cap: may be what the request asked for; not counted."""
    BAD_RESPONSE = "bad_response"
    """An answer that cannot be relayed (a malformed header): a failure."""
    GATEWAY_ERROR = "gateway_error"
    """The gateway itself failed: nothing learnt about the backend."""

    @property
    def is_failure(self) -> bool:
        return self in FAILURES


FAILURES = frozenset(
    {
        AttemptOutcome.CONNECT_ERROR,
        AttemptOutcome.CONNECT_TIMEOUT,
        AttemptOutcome.RESET,
        AttemptOutcome.SERVER_ERROR,
        AttemptOutcome.TIMEOUT,
        AttemptOutcome.BAD_RESPONSE,
    }
)


def classify_status(status: int) -> AttemptOutcome:
    """The outcome an HTTP status from the backend stands for."""
    if status in (429, 503):
        return AttemptOutcome.BACKPRESSURE
    if status >= 500:
        return AttemptOutcome.SERVER_ERROR
    if status >= 400:
        return AttemptOutcome.CLIENT_ERROR
    return AttemptOutcome.OK


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in delta-seconds form (the form vLLM and proxies send); else None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
