"""A stream continued on another backend (issue 13) under access control: the continuation
sends the gateway's backend key too, and the key's tokens are settled once, for both backends."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from quantroute.config import parse_config
from quantroute.sim.fleet import SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.sim.text import split_pieces
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

PROMPT = "Tell me how rivers shape the land."
ANSWER = (
    "Rivers carry water from high ground to the sea, cutting valleys, moving sand and stones, "
    "feeding farms and cities, and building deltas where they slow down and drop their load."
)
KEY = "qr-continuation-key-0123456789abcdefghij"
BACKEND_KEY = "vllm-continuation-backend-key-0123456789"
LIMIT = 100_000


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_a_continued_stream_carries_the_backend_key_and_is_charged_once() -> None:
    specs = [
        SimBackendSpec(id=b, profile="llama3-8b-awq", api_key=BACKEND_KEY) for b in ("a1", "a2")
    ]
    answer_key = {PROMPT: ("chat", ANSWER)}
    config = SimFleetConfig(time_scale=10.0, seed=5, backends=specs)
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_fleet_in_thread(config, answer_key=answer_key) as fleet,
    ):
        key_file = Path(tmp) / "api-key"
        key_file.write_text(BACKEND_KEY)
        rows: list[dict[str, Any]] = [
            {
                "id": b,
                "url": fleet.urls[b],
                "served_model_name": "llama3-8b-awq",
                "variant": "llama3-8b-awq",
                "max_seq_len": 8192,
                "capacity": 64,
                "gpu_cost_per_hour": cost,
            }
            for b, cost in (("a1", 1.0), ("a2", 5.0))
        ]
        digest = hashlib.sha256(KEY.encode()).hexdigest()
        gateway_config = parse_config(
            {
                "backends": rows,
                "groups": [{"name": "auto", "variants": ["llama3-8b-awq"]}],
                "policy": {"scrape_interval_s": 0.1, "tie_tolerance": 0.0},
                "access": {
                    "keys": [
                        {
                            "name": "team",
                            "sha256": digest,
                            "models": ["*"],
                            "admin": True,
                            "limits": {"tokens_per_minute": LIMIT},
                        }
                    ],
                    "upstream_auth": {"default": {"api_key_file": str(key_file)}},
                },
            }
        )
        with GatewayThread(gateway_config) as gateway:
            headers = {"Authorization": f"Bearer {KEY}"}

            def fresh() -> bool:
                rows = httpx.get(gateway.url + "/admin/backends", headers=headers).json()
                return all(r["state"] == "fresh" for r in rows["backends"])

            assert wait_until(fresh, 10)
            half = len(split_pieces(ANSWER)) // 2
            armed = httpx.put(
                fleet.urls["a1"] + "/sim/fault",
                json={"mode": "reset", "after_content_chunks": half},
            )
            assert armed.status_code == 204, armed.text
            text, usage = "", None
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
                stream = client.chat.completions.create(
                    model="auto",
                    messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=200,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for chunk in stream:
                    usage = chunk.usage or usage
                    text += "".join(c.delta.content or "" for c in chunk.choices)
            assert text == ANSWER and usage is not None
            completed = _metric(gateway.url, "quantroute_continuations_total", outcome="completed")
            assert completed == 1  # the stream really was continued on a2
            seen = [a for b in fleet.backends.values() for a in b.authorizations]
            assert len(fleet.backends["a2"].authorizations) >= 1
            assert set(seen) == {f"Bearer {BACKEND_KEY}"}  # the continuation's request too

            def charged() -> float:
                return _metric(gateway.url, "quantroute_key_tokens_total", key="team")

            assert wait_until(lambda: charged() > 0, 5)
            remaining = int(
                httpx.get(gateway.url + "/v1/models", headers=headers).headers[
                    "x-ratelimit-remaining-tokens"
                ]
            )
            # settled once, for what both backends did: a1's relayed half and a2's continuation
            assert LIMIT - remaining == charged() >= usage.total_tokens
