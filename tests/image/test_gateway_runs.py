"""The gateway image started the way Docker and Kubernetes start it: its own entrypoint, as its
own user, as PID 1; with the config baked into it and with one mounted over it."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from quantroute.testing.fake_backend import FakeState, ThreadedServer, wait_until
from quantroute.testing.procs import free_port

from .conftest import Tier
from .images import ROOT
from .runners import Instance, probe_http

CONFIG = "/etc/quantroute/gateway.yaml"
START_TIMEOUT_S = 90.0
# The example config's one (admin) key comes from the environment: it listens on 0.0.0.0, where
# the gateway refuses to run without keys.
KEY = "qr-image-test-key-0123456789abcdef"
KEY_ENV = {"QUANTROUTE_API_KEY": KEY}


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    """Instances a test starts; every one is stopped and removed after it."""
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.close()


def _healthcheck_argv(tier: Tier, port: int) -> list[str]:
    """The image's own HEALTHCHECK command (CMD form), pointed at ``port``."""
    test = tier.gateway.healthcheck
    assert test is not None and test[0] == "CMD", test
    return [arg.replace("127.0.0.1:8080/", f"127.0.0.1:{port}/") for arg in test[1:]]


def _wait_inside(instance: Instance, port: int, path: str, status: int) -> dict[str, object]:
    seen: dict[str, object] = {}

    def answered() -> bool:
        nonlocal seen
        if not instance.alive():
            return True
        seen = probe_http(instance, port, [path])
        answer = seen[path]
        return isinstance(answer, list) and answer[0] == status

    wait_until(answered, timeout_s=START_TIMEOUT_S, interval_s=0.5)
    assert instance.alive(), instance.logs()
    return seen


def test_baked_config_entrypoint_answers_and_healthcheck_passes(tier: Tier) -> None:
    """No arguments, no mounts, a network of its own: `docker run -e QUANTROUTE_API_KEY=... IMAGE`."""
    started = time.monotonic()
    instance = tier.runner.start(tier.gateway, network="private", env=KEY_ENV)
    try:
        _wait_inside(instance, 8080, "/health", 200)
        tier.report.facts["start-up, baked config (start to /health 200)"] = (
            f"{time.monotonic() - started:.1f} s"
        )
        answers = probe_http(instance, 8080, ["/ready", "/metrics"])
        # Its one backend (vllm-llama3-8b-awq:8000) does not exist here: ready (it can answer,
        # 503 with Retry-After; /ready is not tied to fresh metrics), and it says so.
        ready = answers["/ready"]
        assert isinstance(ready, list) and ready[0] == 200, ready
        assert json.loads(ready[1])["metrics_outage"] is True, ready
        refused = answers["/metrics"]  # with keys on, /metrics on the main port is an admin route
        assert isinstance(refused, list) and refused[0] == 401, refused
        metrics = probe_http(instance, 8080, ["/metrics"], bearer=KEY)["/metrics"]
        assert isinstance(metrics, list) and metrics[0] == 200
        assert 'quantroute_backend_up{backend="llama3-8b-awq"' in metrics[1]
        check = tier.gateway.healthcheck
        assert check is not None
        assert instance.exec(check[1:]).code == 0, "the image's HEALTHCHECK, verbatim"
        assert "Uvicorn running on http://0.0.0.0:8080" in instance.logs()
        instance.signal(signal.SIGTERM)
        assert instance.wait(30.0) == 0, instance.logs()
    finally:
        instance.close()


def test_without_its_key_the_baked_config_exits_saying_which_variable(tier: Tier) -> None:
    """`docker run IMAGE` alone: the example config names a key variable that is unset, and the
    gateway on 0.0.0.0 does not start open; it says why and exits non-zero."""
    instance = tier.runner.start(tier.gateway, network="private")
    try:
        code = instance.wait(60.0)
        assert code != 0, instance.logs()
        assert "QUANTROUTE_API_KEY is unset or empty" in instance.logs()
    finally:
        instance.close()


def _mounted_config(backend: ThreadedServer, tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "deploy" / "docker" / "gateway.yaml").read_text())
    config["backends"][0]["url"] = backend.url
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path


def _start_on_loopback(
    tier: Tier, config: Path, instances: list[Instance]
) -> tuple[Instance, str, int]:
    port = free_port()
    started = time.monotonic()
    # Extra `docker run` arguments are appended to `quantroute serve` and win.
    instance = tier.runner.start(
        tier.gateway,
        ["--host", "127.0.0.1", "--port", str(port)],
        mounts={config: CONFIG},
        env=KEY_ENV,
    )
    instances.append(instance)
    url = f"http://127.0.0.1:{port}"

    def status(path: str) -> int:
        try:
            return httpx.get(url + path, timeout=2.0).status_code
        except httpx.HTTPError:
            return 0

    wait_until(lambda: status("/health") == 200 or not instance.alive(), START_TIMEOUT_S, 0.1)
    assert instance.alive(), instance.logs()
    health_s = time.monotonic() - started
    wait_until(lambda: status("/ready") == 200 or not instance.alive(), START_TIMEOUT_S, 0.1)
    ready_s = time.monotonic() - started
    tier.report.facts["start-up, mounted config (start to /health 200, /ready 200)"] = (
        f"{health_s:.1f} s, {ready_s:.1f} s"
    )
    return instance, url, port


def test_mounted_config_routes_to_a_backend_on_loopback(
    tier: Tier,
    backend: tuple[ThreadedServer, FakeState],
    tmp_path: Path,
    instances: list[Instance],
) -> None:
    server, state = backend
    instance, url, port = _start_on_loopback(tier, _mounted_config(server, tmp_path), instances)
    assert httpx.get(url + "/ready", timeout=5).status_code == 200, instance.logs()
    metrics = httpx.get(
        url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=5
    ).text
    assert 'quantroute_backend_up{backend="llama3-8b-awq",state="fresh"} 1.0' in metrics
    with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
    assert raw.headers["x-quantroute-backend"] == "llama3-8b-awq"
    assert raw.parse().choices[0].message.content == " tok" * 4
    assert state.completed == 1
    assert instance.exec(_healthcheck_argv(tier, port)).code == 0


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True


def test_sigterm_lets_an_open_stream_finish_and_exits_0(
    tier: Tier,
    backend: tuple[ThreadedServer, FakeState],
    tmp_path: Path,
    instances: list[Instance],
) -> None:
    server, state = backend
    state.chunk_delay_s = 0.4  # 16 tokens: about 6 s of stream, time to see the listener close
    instance, url, port = _start_on_loopback(tier, _mounted_config(server, tmp_path), instances)
    texts: list[str] = []
    finish = None
    with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        stream = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=16, stream=True
        )
        chunks = iter(stream)
        while not "".join(texts):  # the role chunk first, then content
            texts.append(next(chunks).choices[0].delta.content or "")
        instance.signal(signal.SIGTERM)  # PID 1 of the instance: quantroute itself
        # It stops taking connections at once, while the open stream goes on.
        assert wait_until(lambda: _refuses_connections(port), timeout_s=10.0, interval_s=0.1)
        assert state.active == 1, "the stream is still open"
        for chunk in chunks:
            if chunk.choices:
                texts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
    assert "".join(texts) == " tok" * 16 and finish == "length"
    assert (state.completed, state.aborted) == (1, 0)
    assert instance.wait(30.0) == 0, instance.logs()
    assert "Finished server process" in instance.logs()
