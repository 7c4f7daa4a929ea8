"""Real vLLM: SIGKILL the server of a long stream mid-way; the client's stream completes on the
other server, which received the continuation (``continue_final_message`` with the relayed text).

The first server sits behind a `StreamValve` that holds its stream after ``HOLD_AFTER`` events, so
the kill lands mid-stream however fast the CPU generates (unheld, a fast machine finished all 160
tokens before the client had read 20 chunks, and there was nothing left to continue).

A dedicated pair of servers with the same tiny model (the session's shared servers are not
killed), and the gateway in this process. Bounded: each server start has the tier's health
timeout, the stream a 120 s client timeout."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quantroute.config import parse_config
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

from .conftest import VllmTier
from .procs import ManagedProcess, free_port
from .stack import VLLM_ENV, VLLM_HEALTH_TIMEOUT_S, Variant, vllm_argv
from .valve import StreamValve

pytestmark = pytest.mark.vllm
TWIN = Variant("twin", 512, max_num_seqs=4)
MAX_TOKENS = 160
KILL_AFTER_CHUNKS = 20
HOLD_AFTER = 26  # SSE events let through from twin-a: the role chunk, then content


def _start(tier: VllmTier, name: str, log_dir: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    env = {**os.environ, **VLLM_ENV, "VLLM_LOGGING_LEVEL": "DEBUG"}  # logs each request body
    argv = [*vllm_argv(tier.python, tier.model_dir, TWIN, port), "--enable-log-requests"]
    process = ManagedProcess.start(name, argv, log_dir / f"vllm-{name}.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http_ok(f"{url}/health", VLLM_HEALTH_TIMEOUT_S, interval_s=2.0)
    except BaseException:
        process.stop()
        raise
    return process, port


Twins = tuple[dict[str, ManagedProcess], GatewayThread, StreamValve]


@pytest.fixture
def twins(vllm_tier: VllmTier, tmp_path: Path) -> Iterator[Twins]:
    started: dict[str, ManagedProcess] = {}
    valve: StreamValve | None = None
    try:
        ports: dict[str, int] = {}
        for name in ("twin-a", "twin-b"):
            started[name], ports[name] = _start(vllm_tier, name, tmp_path)
        valve = StreamValve(ports["twin-a"], HOLD_AFTER)
        urls = {"twin-a": valve.url, "twin-b": f"http://127.0.0.1:{ports['twin-b']}"}
        rows = [
            {"id": n, "url": urls[n], "served_model_name": "twin", "variant": "twin",
             "max_seq_len": 512, "capacity": 4, "gpu_cost_per_hour": 0.1 if n == "twin-a" else 1.0}
            for n in urls
        ]  # fmt: skip
        config = parse_config(
            {
                "backends": rows,
                "groups": [{"name": "pair", "variants": ["twin"]}],
                "policy": {"scrape_interval_s": 0.5, "tie_tolerance": 0.0},
            }
        )
        with GatewayThread(config) as gateway:
            fresh = lambda: all(  # noqa: E731
                r["state"] == "fresh"
                for r in httpx.get(gateway.url + "/admin/backends").json()["backends"]
            )
            assert wait_until(fresh, 30)
            yield started, gateway, valve
    finally:
        if valve is not None:
            valve.close()
        for process in started.values():
            process.stop(grace_s=10.0)


def test_sigkill_mid_stream_continues_on_the_other_server(twins: Twins) -> None:
    servers, gateway, valve = twins
    body = {
        "model": "pair",
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    events: list[str] = []
    content = 0
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, timeout=120
    ) as response:
        assert response.headers["x-quantroute-backend"] == "twin-a"
        for line in response.iter_lines():
            if not line:
                continue
            events.append(line)
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                content += 1
                if content == KILL_AFTER_CHUNKS:
                    assert valve.held.wait(30), "twin-a's stream never reached the hold point"
                    os.killpg(servers["twin-a"].popen.pid, signal.SIGKILL)
    assert events.count(": quantroute continued on twin-b") == 1, events[-5:]
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1
    seam = events.index(": quantroute continued on twin-b")
    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert len({(c["id"], c["model"]) for c in chunks}) == 1
    assert sum(1 for c in chunks for ch in c["choices"] if ch["finish_reason"]) == 1
    before = [json.loads(e[6:]) for e in events[:seam] if e.startswith("data: {")]
    prefix = "".join(ch["delta"].get("content") or "" for c in before for ch in c["choices"])
    relayed = sum(1 for c in before for ch in c["choices"] if ch["delta"].get("content"))
    assert KILL_AFTER_CHUNKS <= relayed < HOLD_AFTER and prefix
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == MAX_TOKENS
    # twin-b's own log (vLLM --enable-log-requests, DEBUG): the continuation's request body
    log = servers["twin-b"].log_path.read_text(errors="replace")
    bodies = [line for line in log.splitlines() if "JSON body" in line]
    assert bodies, log[-2000:]
    request = json.loads(bodies[-1].split("JSON body: ", 1)[1])
    assert request["continue_final_message"] is True
    assert request["add_generation_prompt"] is False
    assert request["messages"][-1] == {"role": "assistant", "content": prefix}
    assert request["max_tokens"] == MAX_TOKENS - relayed
