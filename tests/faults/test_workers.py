"""``quantroute serve --workers 2``: two gateway processes on one port (SO_REUSEPORT), both
answering, each with its own /metrics; SIGTERM to the parent drains and stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.procs import bound_port

from .test_lifecycle import write_config

REQUESTS = 40


@pytest.fixture
def backend_url() -> Iterator[str]:
    server = ThreadedServer(FakeBackend(FakeState(served_model_name="m")).app).start()
    yield server.url
    server.stop()


def scrape(url: str) -> tuple[str, float]:
    """(the answering worker's pid, the chat requests it answered), over a new connection."""
    pid, answered = "", 0.0
    text = httpx.get(url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "quantroute_worker_info":
                assert s.labels["workers"] == "2"
                pid = s.labels["pid"]
            if s.name == "quantroute_requests_total" and s.labels.get("status") == "200":
                answered += s.value
    return pid, answered


def test_two_workers_share_the_port_and_both_answer(tmp_path: Path, backend_url: str) -> None:
    config = tmp_path / "gateway.yaml"
    write_config(config, 0, {"a": backend_url}, resilience={"drain": {"announce_s": 0.0}})
    log = tmp_path / "gateway.log"
    cmd = [sys.executable, "-m", "quantroute.cli", "serve", "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--workers", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{bound_port(log, proc)}"
        # both workers listen once both logged their start (the first to log gave the port)
        assert wait_until(lambda: log.read_text().count("Uvicorn running on") == 2, 30, 0.1)
        assert wait_until(lambda: httpx.get(url + "/ready").status_code == 200, 30, 0.1)
        for i in range(REQUESTS):  # a new client (a new connection) each: the kernel spreads them
            with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as client:
                answer = client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4
                )
            assert answer.choices[0].message.content
        seen: dict[str, float] = {}
        for _ in range(200):  # bounded: until each worker's /metrics was seen once
            pid, answered = scrape(url)
            seen[pid] = answered
            if len(seen) == 2:
                break
        assert len(seen) == 2, seen  # two workers, each its own registry
        assert sum(seen.values()) == REQUESTS  # every request counted by the worker it reached
        assert all(n > 0 for n in seen.values()), seen  # both answered
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in seen:
            assert not _alive(int(pid)), f"worker {pid} outlived the parent"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
