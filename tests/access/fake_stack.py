"""The real gateway (uvicorn, loopback) with access control in front of fast fake vLLM backends."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from quantroute.config import parse_config
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_row(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "sha256": sha(key), "models": ["*"], **extra}


@dataclass
class Gate:
    gateway: GatewayThread
    backends: dict[str, FakeBackend]
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, key: str, **kw: Any) -> openai.OpenAI:
        """An OpenAI client of the gateway with ``key``, closed when the gate stops."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)
        self.clients.append(client)
        return client

    def post(
        self, key: str | None, body: dict[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kw.pop("headers", {}))
        payload = body if body is not None else {"model": "auto", "messages": MSG, "max_tokens": 8}
        return httpx.post(
            self.url + "/v1/chat/completions", json=payload, headers=headers, timeout=30, **kw
        )

    def get(self, key: str | None, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=30)


GateFactory = Callable[..., Gate]


@pytest.fixture
def make_gate() -> Iterator[GateFactory]:
    started: list[tuple[Gate, list[ThreadedServer]]] = []

    def factory(
        access: dict[str, Any],
        *,
        states: dict[str, FakeState] | None = None,
        groups: list[dict[str, Any]] | None = None,
        backends: dict[str, FakeBackend] | None = None,
        servers: dict[str, ThreadedServer] | None = None,
        resilience: dict[str, Any] | None = None,
    ) -> Gate:
        if backends is None:
            states = states or {"a": FakeState(served_model_name="model-a")}
            backends = {k: FakeBackend(s) for k, s in states.items()}
            servers = {k: ThreadedServer(b.app).start() for k, b in backends.items()}
            own = list(servers.values())
        else:
            own = []
        assert servers is not None
        rows = [
            {
                "id": k,
                "url": servers[k].url,
                "served_model_name": b.state.served_model_name,
                "max_seq_len": 8192,
                "capacity": 64,
            }
            for k, b in backends.items()
        ]
        config = parse_config(
            {
                "backends": rows,
                "groups": groups or [{"name": "auto", "variants": list(backends)}],
                "policy": {"scrape_interval_s": 0.1, "staleness_limit_s": 2.0},
                "access": access,
                "resilience": resilience or {},
            }
        )
        gateway = GatewayThread(config).start()
        gate = Gate(gateway, backends)
        started.append((gate, own))
        assert wait_until(lambda: _ready(gate), 10)
        return gate

    yield factory
    for gate, own in started:
        for client in gate.clients:
            client.close()
        gate.gateway.stop()
        for server in own:
            server.stop()


def _ready(gate: Gate) -> bool:
    try:
        return httpx.get(gate.url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
