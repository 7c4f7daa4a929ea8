"""The errors of access control, in the one error tree (:mod:`quantroute.errors`).

RequestError
├── MissingApiKey          401 invalid_api_key: no Authorization: Bearer (nor x-api-key)
├── InvalidApiKey          401 invalid_api_key: unknown key (the key is never echoed)
├── RevokedApiKey          401 invalid_api_key: a key marked revoked
├── PermissionDenied       403: the key may not use this model / this route
├── RateLimited            429 rate_limit_exceeded, Retry-After and x-ratelimit-* headers
├── QuotaUnavailable       503 quota_unavailable: the shared counters cannot be reached
└── UnsupportedMediaType   415 unsupported_media_type: a body that is not JSON

(A body over ``resilience.client.max_body_bytes`` is 413 ``request_too_large`` from the client
limits middleware, :mod:`quantroute.resilience.client_limits`.)
"""

from __future__ import annotations

from collections.abc import Mapping

from quantroute.errors import RequestError

_HOW = (
    "Send your API key in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)


class MissingApiKey(RequestError):
    status = 401
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__("You didn't provide an API key. " + _HOW)

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="quantroute"'}


class InvalidApiKey(MissingApiKey):
    def __init__(self) -> None:
        RequestError.__init__(self, "Incorrect API key provided. " + _HOW)


class RevokedApiKey(MissingApiKey):
    def __init__(self) -> None:
        RequestError.__init__(self, "This API key has been revoked.")


class PermissionDenied(RequestError):
    status = 403
    error_type = "permission_error"

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


class RateLimited(RequestError):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, kind: str, retry_after_s: int, headers: Mapping[str, str]
    ) -> None:
        super().__init__(message)
        self.error_type = kind
        self.retry_after_s = retry_after_s
        self._headers = dict(headers)

    def headers(self) -> dict[str, str]:
        return {**self._headers, "Retry-After": str(self.retry_after_s)}


class QuotaUnavailable(RequestError):
    status = 503
    error_type = "service_unavailable"
    code = "quota_unavailable"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Quotas cannot be checked right now; retry shortly.")
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"

    def __init__(self) -> None:
        super().__init__("Content-Type must be application/json.")
