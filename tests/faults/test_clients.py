"""Slow and vanishing clients at every stage of a request, against the real gateway."""

from __future__ import annotations

import json
import logging
import select
import socket
import time

import httpx
import pytest

from quantroute.testing.fake_backend import FakeState, wait_until
from quantroute.testing.faults import Firehose, RawServer

from .conftest import Fleet, FleetFactory

BODY = json.dumps(
    {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
).encode()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def head(length: int, path: str = "/v1/chat/completions") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


def answered_within(sock: socket.socket, data: bytes, interval_s: float, max_s: float) -> bool:
    """Trickle ``data`` a byte at a time; True once the gateway answers (before all was sent)."""
    deadline = time.monotonic() + max_s
    for byte in data:
        if select.select([sock], [], [], interval_s)[0]:
            return True
        if time.monotonic() > deadline:
            return False
        sock.sendall(bytes([byte]))
    return bool(select.select([sock], [], [], max_s)[0])


def status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data and (chunk := sock.recv(4096)):
        data += chunk
    return int(data.split()[1])


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def fleet(make_fleet: FleetFactory) -> Fleet:
    return make_fleet(
        {"a": FakeState(served_model_name="fake-model", chunk_delay_s=0.05, header_delay_s=0.0)},
        resilience={"client": {"header_timeout_s": 0.5, "body_idle_s": 0.5, "body_timeout_s": 2}},
    )


def test_slow_headers_are_cut_with_408(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    with connect(fleet.url) as sock:
        assert answered_within(sock, head(len(BODY)) + BODY, 0.2, 10)
        assert status_of(sock) == 408
    assert fleet.fakes["a"].state.received == []
    fleet.assert_no_leaks()
    assert no_errors_logged(caplog) == []


def test_slow_body_is_cut_with_408(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    with connect(fleet.url) as sock:
        sock.sendall(head(len(BODY)))
        assert answered_within(sock, BODY, 0.2, 10)
        assert status_of(sock) == 408
    assert fleet.fakes["a"].state.received == []
    fleet.assert_no_leaks()
    assert no_errors_logged(caplog) == []


@pytest.mark.parametrize("sent", [0, 10])
def test_client_vanishing_during_upload_is_quiet(
    make_fleet: FleetFactory, caplog: pytest.LogCaptureFixture, sent: int
) -> None:
    # the body timers far from the test's pauses: a stalled thread must not turn the vanishing
    # client into a 408 (which the timer tests above check)
    fleet = make_fleet(
        {"a": FakeState(served_model_name="fake-model", chunk_delay_s=0.05, header_delay_s=0.0)},
        resilience={"client": {"header_timeout_s": 10, "body_idle_s": 10, "body_timeout_s": 30}},
    )
    caplog.set_level(logging.INFO)
    with connect(fleet.url) as sock:
        sock.sendall(head(len(BODY)) + BODY[:sent])
        time.sleep(0.1)
    assert wait_until(
        lambda: (
            fleet.metric("quantroute_client_rejections_total", reason="client_gone_during_upload")
            == 1
        )
    )
    assert fleet.fakes["a"].state.received == []
    fleet.assert_no_leaks()
    assert no_errors_logged(caplog) == []


def test_client_vanishing_before_the_first_byte_aborts_the_backend(
    make_fleet: FleetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet({"a": FakeState(served_model_name="fake-model", header_delay_s=5.0)})
    state = fleet.fakes["a"].state
    for expected, stream in enumerate((False, True), start=1):
        body = json.dumps({**json.loads(BODY), "stream": stream}).encode()
        with connect(fleet.url) as sock:
            sock.sendall(head(len(body)) + body)
            assert wait_until(lambda: len(state.received) == expected)  # noqa: B023 (waited on here)
    assert wait_until(lambda: state.aborted == 2)
    assert wait_until(lambda: fleet.metric("quantroute_requests_total", status="499") == 2)
    fleet.assert_no_leaks()
    assert no_errors_logged(caplog) == []


def test_client_vanishing_mid_stream_aborts_the_backend(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    state = fleet.fakes["a"].state
    body = json.dumps({**json.loads(BODY), "stream": True}).encode()
    with connect(fleet.url) as sock:
        sock.sendall(head(len(body)) + body)
        assert wait_until(lambda: state.active == 1)
        sock.recv(1024)  # the stream has started
    assert wait_until(lambda: state.aborted == 1 and state.active == 0)
    assert state.completed == 0
    fleet.assert_no_leaks()
    assert no_errors_logged(caplog) == []


def test_client_that_stops_reading_holds_no_unbounded_buffer(make_fleet: FleetFactory) -> None:
    """A client that reads nothing: the gateway stops reading upstream too (TCP backpressure)."""
    firehose = Firehose()
    fleet = make_fleet({"a": RawServer(firehose)})
    body = json.dumps({**json.loads(BODY), "stream": True}).encode()
    with connect(fleet.url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(head(len(body)) + body)
        assert wait_until(lambda: firehose.sent > 0)

        def stalled() -> bool:  # nothing more sent for 0.5 s
            before = firehose.sent
            time.sleep(0.5)
            return firehose.sent == before

        # unchecked, loopback carries hundreds of MB a second: a gateway that buffered would
        # never stall, or stall far above the socket buffers
        assert wait_until(stalled, 20), firehose.sent
        assert firehose.sent < 32 * 1024 * 1024  # stalled, at socket-buffer size
    fleet.assert_no_leaks()


def test_deep_json_and_too_many_messages_are_400(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b'{"model": "auto", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    json_type = {"content-type": "application/json"}  # anything else is 415 before parsing
    r = httpx.post(fleet.url + "/v1/chat/completions", content=deep, headers=json_type, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    many = {"model": "auto", "messages": [{"role": "user", "content": "x"}] * 5000}
    r = httpx.post(fleet.url + "/v1/chat/completions", json=many, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    fleet.assert_no_leaks()
    assert no_errors_logged(caplog) == []
