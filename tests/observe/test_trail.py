"""With nothing configured the request path gets shared no-op objects: no allocation, no SDK."""

from __future__ import annotations

from quantroute.config import BackendConfig
from quantroute.observe.observer import Observer
from quantroute.observe.trail import NO_ATTEMPT, NO_TRAIL

BACKEND = BackendConfig(
    id="a", url="http://127.0.0.1:1", served_model_name="m", max_seq_len=8, capacity=1
)


def test_an_unconfigured_observer_hands_out_the_shared_no_op_trail() -> None:
    observer = Observer()
    observer.start()
    trail = observer.begin("POST", "/v1/chat/completions", "chat", {"traceparent": "x"})
    assert trail is NO_TRAIL
    assert trail.phase("parse") is trail.phase("decide")
    attempt = trail.attempt(1, BACKEND)
    assert attempt is NO_ATTEMPT
    headers = {"Content-Type": "application/json"}
    assert attempt.headers(headers) is headers
    observer.stop()


def test_a_stopped_observer_stops_recording() -> None:
    from quantroute.config import AccessLogConfig
    from quantroute.observe.access_log import AccessLog

    observer = Observer(access_log=AccessLog(AccessLogConfig(path="-")))
    observer.start()
    assert observer.begin("POST", "/x", "chat", {}) is not NO_TRAIL
    observer.stop()
    assert observer.begin("POST", "/x", "chat", {}) is NO_TRAIL
