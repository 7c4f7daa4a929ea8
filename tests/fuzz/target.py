"""What the fuzzers attack: the real gateway with API keys (uvicorn, loopback) in front of fake
vLLM backends. Every 4xx must be in OpenAI's error format; nothing may answer 5xx except the
documented 502/503 of an unreachable or saturated fleet (which these backends never are)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from quantroute.config import parse_config
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

from .st_checks import openai_error_problems  # noqa: F401  (shared with the hooks)

KEY = "qr-fuzz-key-5c1e9b3d7f2a4c6e8b0d2f4a6c8e0b2d"


@dataclass
class Target:
    url: str
    backends: dict[str, FakeBackend]


@contextmanager
def fuzz_target(**access: Any) -> Iterator[Target]:
    states = {
        "a": FakeState(served_model_name="model-a", default_tokens=4),
        "b": FakeState(served_model_name="model-b", default_tokens=4),
    }
    backends = {k: FakeBackend(s) for k, s in states.items()}
    servers = {k: ThreadedServer(b.app).start() for k, b in backends.items()}
    try:
        rows = [
            {"id": k, "url": servers[k].url, "served_model_name": s.served_model_name,
             "max_seq_len": 8192, "capacity": 64}
            for k, s in states.items()
        ]  # fmt: skip
        key = {"name": "fuzz", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "models": ["*"]}
        config = parse_config(
            {
                "backends": rows,
                "groups": [{"name": "auto", "variants": ["a", "b"]}],
                "policy": {"scrape_interval_s": 0.2, "staleness_limit_s": 30.0},
                "access": {
                    "keys": [{**key, "admin": True}],
                    "request_caps": [{"group": "*", "max_tokens": 64, "n": 4, "messages": 64}],
                    **access,
                },
            }
        )
        gateway = GatewayThread(config).start()
        try:
            target = Target(gateway.url, backends)
            assert wait_until(lambda: _ready(target), 10), "gateway never ready"
            yield target
        finally:
            gateway.stop()
    finally:
        for server in servers.values():
            server.stop()


def _ready(target: Target) -> bool:
    import httpx

    try:
        return httpx.get(target.url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
