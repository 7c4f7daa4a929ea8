"""The proxy routes' fused edge (``ProxyEdge``: access, client limits and the proxy route as one)
answers as the three middlewares do. Two gateways with the same config in front of the same
fake backend, one with the edge and one without (``GatewayApp.fused_edge = False``), get the
same sequence of requests over HTTP; every answer's status, error body and headers must agree:
refusals of the key (401, 403-free here), of the media type (415), of the body's size (413), of
the concurrency limit (503), the gateway's own errors (400, 404), quota counts and the 429, the
request id echoed and the decision header shown only to whom may see it."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from quantroute.config import parse_config
from quantroute.server.app import create_app
from quantroute.server.edge import ProxyEdge
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

from .fake_stack import MSG, key_row

LIMITED = "qr-edge-limited-key-0123456789abcdefghij"
ADMIN = "qr-edge-admin-key-0123456789abcdefghijkl"
WRONG = "qr-edge-wrong-key-0123456789abcdefghijkl"
MAX_BODY = 4096
VARYING = frozenset(
    {"date", "server", "content-length", "x-request-id", "x-quantroute-decision", "retry-after"}
)
"""Headers compared by presence only (the decision's scores and the answer's length follow
the moment's measurements, a 429's wait the clock; ids are new per request unless the client
gave one)."""
RESETS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")


@dataclass
class Pair:
    fused: GatewayThread
    layered: GatewayThread
    backend: FakeBackend


@pytest.fixture
def pair() -> Iterator[Pair]:
    state = FakeState(served_model_name="model-a")
    backend = FakeBackend(state)
    server = ThreadedServer(backend.app).start()
    config = parse_config(
        {
            "backends": [
                {
                    "id": "a",
                    "url": server.url,
                    "served_model_name": "model-a",
                    "max_seq_len": 8192,
                    "capacity": 64,
                }
            ],
            "groups": [{"name": "auto", "variants": ["a"]}],
            "policy": {"scrape_interval_s": 0.1, "staleness_limit_s": 2.0},
            "access": {
                "keys": [
                    key_row("team", LIMITED, limits={"requests_per_minute": 4}),
                    key_row("ops", ADMIN, admin=True),
                ]
            },
            "resilience": {"client": {"max_body_bytes": MAX_BODY, "max_concurrent_requests": 1}},
        }
    )
    layered_app = create_app(config)
    layered_app.fused_edge = False  # type: ignore[attr-defined]
    gateways = [GatewayThread(config).start(), GatewayThread(config, app=layered_app).start()]
    try:
        for g in gateways:
            assert wait_until(lambda g=g: _ready(g.url), 10)
        yield Pair(gateways[0], gateways[1], backend)
    finally:
        for g in gateways:
            g.stop()
        server.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _post(url: str, key: str | None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    if "json" not in kw and "content" not in kw:
        kw["json"] = {"model": "auto", "messages": MSG, "max_tokens": 4}
    return httpx.post(url + "/v1/chat/completions", headers=headers, timeout=30, **kw)


def _view(r: httpx.Response) -> dict[str, Any]:
    """What must agree: status, the error body without its request id, every header's value
    (presence only for :data:`VARYING`, the quota resets' units)."""
    view: dict[str, Any] = {"status": r.status_code}
    if r.status_code >= 400:
        body = r.json()
        error = body.get("error", {})
        error.pop("request_id", None)
        if isinstance(error.get("message"), str):  # a 429 says how long to wait
            error["message"] = re.sub(r"[0-9.]+s\b", "<s>", error["message"])
        view["error"] = body
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    for name, value in r.headers.items():
        if name in VARYING:
            view[name] = True
        elif name in RESETS:
            view[name] = value[-1]  # the unit: the count down moves with the clock
        else:
            view[name] = value
    return view


def _both(pair: Pair, send: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return _view(send(pair.fused.url)), _view(send(pair.layered.url))


def test_the_fused_edge_is_in_use_and_the_reference_is_not(pair: Pair) -> None:
    """The comparison below is between two paths, not one path twice."""
    for g in (pair.fused, pair.layered):
        assert _post(g.url, ADMIN).status_code == 200  # the stack is built by now
    assert isinstance(pair.fused.app._edge, ProxyEdge)  # type: ignore[attr-defined]
    assert pair.layered.app.fused_edge is False  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("case", "send"),
    [
        ("no key", lambda url: _post(url, None)),
        ("wrong key", lambda url: _post(url, WRONG)),
        ("not JSON", lambda url: _post(url, ADMIN, content=b"hi", headers={"content-type": "text/plain"})),
        ("too large", lambda url: _post(url, ADMIN, json={"model": "auto", "messages": [{"role": "user", "content": "x" * MAX_BODY}]})),
        ("bad JSON", lambda url: _post(url, ADMIN, content=b"{", headers={"content-type": "application/json"})),
        ("unknown model", lambda url: _post(url, ADMIN, json={"model": "nope", "messages": MSG})),
        ("admin sees the decision", lambda url: _post(url, ADMIN)),
        ("client request id", lambda url: _post(url, ADMIN, headers={"x-request-id": "edge-test-7"})),
    ],
)  # fmt: skip
def test_each_answer_is_the_middlewares_answer(pair: Pair, case: str, send: Any) -> None:
    fused, layered = _both(pair, send)
    assert fused == layered, case


def test_a_client_request_id_is_echoed_by_both(pair: Pair) -> None:
    for g in (pair.fused, pair.layered):
        r = _post(g.url, ADMIN, headers={"x-request-id": "edge-test-8"})
        assert r.headers["x-request-id"] == "edge-test-8"
        assert "x-quantroute-decision" in r.headers  # an admin key sees it


def test_quota_counts_and_the_429_agree(pair: Pair) -> None:
    """A key limited to 4 requests a minute: four answers with their counts, then the 429,
    and no decision header for a key that is not an admin's."""
    views = [_both(pair, lambda url: _post(url, LIMITED)) for _ in range(5)]
    for fused, layered in views:
        assert fused == layered
    assert [v[0]["status"] for v in views] == [200, 200, 200, 200, 429]
    assert [v[0]["x-ratelimit-remaining-requests"] for v in views] == ["3", "2", "1", "0", "0"]
    assert all("x-quantroute-decision" not in v[0] for v in views)


def test_the_concurrency_limit_refuses_alike(pair: Pair) -> None:
    """One request held at the backend fills the limit of one: the next is refused with 503
    and Retry-After, as the client-limits middleware refuses it."""
    gate = pair.backend.state.gate = threading.Event()
    views = []
    try:
        for url in (pair.fused.url, pair.layered.url):
            held_at = len(pair.backend.state.received) + 1
            held = threading.Thread(target=_post, args=(url, ADMIN))
            held.start()
            assert wait_until(lambda n=held_at: len(pair.backend.state.received) == n, 10)
            views.append(_view(_post(url, ADMIN)))
            gate.set()
            held.join(30)
            assert not held.is_alive()
            gate.clear()
    finally:
        gate.set()
        pair.backend.state.gate = None
    assert views[0] == views[1]
    assert views[0]["status"] == 503 and views[0]["retry-after"]
