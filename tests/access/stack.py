"""The gateway with API keys in front of simulated vLLM servers that require their own key."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from quantroute.config import parse_config
from quantroute.sim.fleet import FleetHandle, SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

USER = "qr-user-4f1d9a0b7c2e45d8a9b1c3e5f7a9b1c3"
OTHER = "qr-other-8e2c4a6b0d1f3e5a7c9b1d3f5a7c9e1b"
REVOKED = "qr-revoked-1a3c5e7b9d0f2a4c6e8b0d2f4a6c8e0"
ADMIN = "qr-admin-5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7"
WRONG = "qr-wrong-0000000000000000000000000000000"
BACKEND_KEY = "vllm-backend-key-7d3f9a1c5e7b9d1f3a5c7e9b"
CLIENT_KEYS = (USER, OTHER, REVOKED, ADMIN, WRONG)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS: list[dict[str, Any]] = [
    {"name": "user", "sha256": sha(USER), "models": ["auto"]},
    {"name": "other", "sha256": sha(OTHER), "models": ["premium"]},
    {"name": "revoked", "sha256": sha(REVOKED), "models": ["*"], "revoked": True},
    {"name": "admin", "sha256": sha(ADMIN), "models": ["*"], "admin": True},
]


@dataclass
class Stack:
    fleet: FleetHandle
    gateway: GatewayThread
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, key: str, **kw: Any) -> openai.OpenAI:
        """An OpenAI client of the gateway with ``key``, closed when the stack stops."""
        client = openai.OpenAI(
            base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30, **kw
        )
        self.clients.append(client)
        return client

    def http(self, key: str | None) -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def authorizations(self) -> list[str | None]:
        """Every Authorization header the simulated vLLM servers received on /v1."""
        return [a for backend in self.fleet.backends.values() for a in backend.authorizations]


@contextmanager
def access_stack(
    access: dict[str, Any] | None = None, *, backend_key: str | None = BACKEND_KEY
) -> Iterator[Stack]:
    names = {"a": "llama3-8b-awq", "b": "llama3-8b-awq", "c": "premium-model"}
    specs = [
        SimBackendSpec(
            id=i,
            profile="llama3-8b-awq",
            served_model_name=names[i],
            max_num_seqs=32,
            api_key=backend_key,
        )
        for i in ("a", "b", "c")
    ]
    config = SimFleetConfig(time_scale=20.0, seed=5, backends=specs)
    with tempfile.TemporaryDirectory() as tmp, run_fleet_in_thread(config, answer_key={}) as fleet:
        rows = [
            {
                "id": i,
                "url": fleet.urls[i],
                "served_model_name": "llama3-8b-awq",
                "max_seq_len": 8192,
                "capacity": 32,
                "gpu_cost_per_hour": 1.2,
                "variant": f"v{i}",
            }
            for i in ("a", "b", "c")
        ]
        rows[2]["served_model_name"] = "premium-model"
        access_config: dict[str, Any] = {"keys": KEYS}
        if backend_key is not None:
            key_file = Path(tmp) / "api-key"
            key_file.write_text(backend_key + "\n")
            access_config["upstream_auth"] = {"default": {"api_key_file": str(key_file)}}
        access_config.update(access or {})
        config_data = {
            "backends": rows,
            "groups": [
                {"name": "auto", "variants": ["va", "vb"]},
                {"name": "premium", "variants": ["vc"]},
            ],
            "policy": {"scrape_interval_s": 0.2, "staleness_limit_s": 3.0},
            "access": access_config,
        }
        gateway = GatewayThread(parse_config(config_data)).start()
        stack = Stack(fleet, gateway)
        try:
            with stack.http(ADMIN) as http:
                assert wait_until(lambda: _all_fresh(http), 10), "backends never fresh"
            yield stack
        finally:
            for client in stack.clients:
                client.close()
            gateway.stop()


def _all_fresh(http: httpx.Client) -> bool:
    rows = http.get("/admin/backends").json()["backends"]
    return all(r["state"] == "fresh" for r in rows)


def no_key_in(text: str) -> list[str]:
    return [k for k in (*CLIENT_KEYS, BACKEND_KEY) if k in text]


class AllRecords(logging.Handler):
    """Every log record of every logger, formatted with arguments (what an operator would see)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
