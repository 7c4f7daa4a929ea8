"""`quantroute demo` as a newcomer runs it: a subprocess that serves, answers, and stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import openai
import pytest

from quantroute.testing.fake_backend import wait_until
from quantroute.testing.procs import free_port

SIM_PORTS = (8101, 8102, 8103, 8104, 8105)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_demo_serves_and_stops_cleanly() -> None:
    if any(_listening(p) for p in SIM_PORTS):
        pytest.skip("the demo's simulator ports 8101-8105 are taken on this machine")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantroute.cli", "demo", "--port", str(port), "--time-scale", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        assert wait_until(lambda: _ready(url), 30, 0.2), "demo did not become ready"
        with openai.OpenAI(base_url=url + "/v1", api_key="demo", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "Hello"}], max_tokens=16
            )
            assert reply.choices[0].message.content and reply.usage is not None
            assert client.responses.create(model="auto", input="Hello").output_text
            embedded = client.embeddings.create(model="auto", input="Hello")
            assert len(embedded.data[0].embedding) == 4096
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out.decode()
    text = out.decode()
    assert f'base_url="{url}/v1"' in text and "demo stopped" in text
    assert not any(_listening(p) for p in (*SIM_PORTS, port))
