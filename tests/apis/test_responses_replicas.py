"""Two gateway replicas sharing one Redis: a conversation continues on either of them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from quantroute.config import parse_config
from quantroute.sim.fleet import FleetHandle, SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread
from quantroute.testing.redis_server import RedisServer

KEY = {"Say hello.": ("chat", "Hello there."), "Name a colour.": ("chat", "Blue.")}


@pytest.fixture
def fleet() -> Iterator[FleetHandle]:
    specs = [SimBackendSpec(id="a", profile="llama3-8b-awq"),
             SimBackendSpec(id="b", profile="qwen25-7b-gptq")]  # fmt: skip
    with run_fleet_in_thread(
        SimFleetConfig(time_scale=20, seed=1, backends=specs), answer_key=KEY
    ) as f:
        yield f


def _replicas(fleet: FleetHandle, redis_url: str) -> list[GatewayThread]:
    served = {"a": "llama3-8b-awq", "b": "qwen25-7b-gptq"}
    config = parse_config({
        "backends": [{"id": k, "url": fleet.urls[k], "served_model_name": v, "max_seq_len": 8192,
                      "capacity": 64} for k, v in served.items()],
        "groups": [{"name": "auto", "variants": ["a", "b"]}],
        "policy": {"scrape_interval_s": 0.1},
        "conversations": {"redis_url": redis_url, "redis_timeout_s": 0.5},
    })  # fmt: skip
    return [GatewayThread(config).start() for _ in range(2)]


_CLIENTS: dict[str, openai.OpenAI] = {}


def _client(gateway: GatewayThread) -> openai.OpenAI:
    """One OpenAI client per gateway, closed after each test (see ``_close_clients``)."""
    if gateway.url not in _CLIENTS:
        _CLIENTS[gateway.url] = openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="t", max_retries=0, timeout=30
        )
    return _CLIENTS[gateway.url]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.popitem()[1].close()


def _ready(gateway: GatewayThread) -> bool:
    import httpx

    return httpx.get(gateway.url + "/ready").status_code == 200


def test_a_conversation_moves_between_replicas(
    fleet: FleetHandle, redis_server: RedisServer
) -> None:
    one, two = replicas = _replicas(fleet, redis_server.url)
    try:
        assert all(wait_until(lambda g=g: _ready(g)) for g in replicas)
        first = _client(one).responses.create(model="auto", input="Say hello.")
        second = _client(two).responses.create(
            model="auto", input="Name a colour.", previous_response_id=first.id
        )
        assert second.previous_response_id == first.id
        sent = [body for b in ("a", "b") for path, body in fleet.received(b)
                if path == "/v1/responses" and body["input"] != "Say hello."]  # fmt: skip
        assert [item["role"] for item in sent[-1]["input"]] == ["user", "assistant", "user"]
        assert _client(one).responses.retrieve(second.id).output_text == second.output_text
    finally:
        for g in replicas:
            g.stop()


def test_redis_down_is_a_prompt_503_not_a_hang(
    fleet: FleetHandle, redis_server: RedisServer
) -> None:
    (gateway, other) = _replicas(fleet, redis_server.url)
    other.stop()
    try:
        assert wait_until(lambda: _ready(gateway))
        first = _client(gateway).responses.create(model="auto", input="Say hello.")
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            _client(gateway).responses.create(
                model="auto", input="Name a colour.", previous_response_id=first.id
            )
        assert caught.value.status_code == 503
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "conversation_store_unavailable"
        assert time.monotonic() - started < 10
        # a turn that starts a conversation is still answered; only storing it fails
        assert _client(gateway).responses.create(model="auto", input="Say hello.").output_text
    finally:
        gateway.stop()
