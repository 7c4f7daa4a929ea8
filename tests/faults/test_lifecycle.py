"""Drain on SIGTERM and hot reload, against ``quantroute serve`` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from quantroute.testing.fake_backend import (
    FakeBackend,
    FakeState,
    ThreadedServer,
    wait_until,
)
from quantroute.testing.procs import bound_port


class Serve:
    """``quantroute serve --config FILE`` in its own process group; stopped for sure."""

    def __init__(self, config_path: Path) -> None:
        """The config listens on port 0; the port the gateway bound is read from its log."""
        self.path = config_path
        self.log = config_path.with_suffix(".log")
        cmd = [sys.executable, "-m", "quantroute.cli", "serve", "--config", str(config_path)]
        with self.log.open("wb") as out:  # the child has its own descriptor once started
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self.url = f"http://127.0.0.1:{bound_port(self.log, self.proc)}"
            assert wait_until(self.ready_status_is_known, 30, 0.1), self.output()
        except BaseException:
            self.stop()
            raise

    def ready_status_is_known(self) -> bool:
        try:
            return httpx.get(self.url + "/ready", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(httpx.get(self.url + "/metrics").text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def admin(self) -> dict[str, Any]:
        rows = httpx.get(self.url + "/admin/backends").json()["backends"]
        return {r["id"]: r for r in rows}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def backends() -> Iterator[dict[str, tuple[FakeBackend, ThreadedServer]]]:
    started: dict[str, tuple[FakeBackend, ThreadedServer]] = {}
    for name in ("a", "b"):
        fake = FakeBackend(FakeState(served_model_name="m", chunk_delay_s=0.05))
        started[name] = (fake, ThreadedServer(fake.app).start())
    yield started
    for _, server in started.values():
        server.stop()


def write_config(path: Path, port: int, backends: dict[str, str], **extra: Any) -> None:
    rows = [
        {
            "id": k,
            "url": url,
            "served_model_name": "m",
            "variant": "v",
            "max_seq_len": 4096,
            "capacity": 16,
        }
        for k, url in backends.items()
    ]
    data = {
        "listen": {"host": "127.0.0.1", "port": port},
        "backends": rows,
        "groups": [{"name": "auto", "variants": ["v"]}],
        "policy": {"scrape_interval_s": 0.2},
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    tmp.replace(path)  # as editors and ConfigMaps do: the new file appears whole


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    running: list[Serve] = []

    def start(backends: dict[str, str], **extra: Any) -> Serve:
        path = tmp_path / "gateway.yaml"
        write_config(path, 0, backends, **extra)
        proc = Serve(path)
        running.append(proc)
        return proc

    yield start
    for proc in running:
        proc.stop()


class StreamReader(threading.Thread):
    def __init__(self, url: str, max_tokens: int, model: str = "auto") -> None:
        super().__init__(daemon=True)
        self.url, self.max_tokens, self.model = url, max_tokens, model
        self.body = b""
        self.error: Exception | None = None
        self.backend = ""

    def run(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": self.max_tokens,
            "stream": True,
        }
        try:
            with httpx.stream(
                "POST", self.url + "/v1/chat/completions", json=body, timeout=60
            ) as r:
                self.backend = r.headers.get("x-quantroute-backend", "")
                for chunk in r.iter_bytes():
                    self.body += chunk
        except httpx.HTTPError as exc:
            self.error = exc


def refuses(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_sigterm_drains_streams_and_exits_0(serve: Any, backends: Any) -> None:
    fake, server = backends["a"]
    # Generous on a loaded machine: the announcement (5 s) must outlast the /ready and /health
    # reads after SIGTERM (each a new client: seconds under load), and the stream (15 s) the
    # announcement and the wait for refused connections.
    gw = serve({"a": server.url}, resilience={"drain": {"announce_s": 5.0, "deadline_s": 40}})
    assert wait_until(lambda: httpx.get(gw.url + "/ready").status_code == 200, 10)
    stream = StreamReader(gw.url, max_tokens=300)  # 15 s of tokens
    stream.start()
    assert wait_until(lambda: fake.state.active == 1, 10)
    gw.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: httpx.get(gw.url + "/ready").status_code == 503, 4)
    assert fake.state.active == 1  # /ready turned while the stream was still running
    assert httpx.get(gw.url + "/health").status_code == 200  # still listening: the announcement
    assert wait_until(lambda: refuses(gw.url), 15)  # then new connections are refused...
    assert stream.is_alive()  # ...while the open stream goes on
    stream.join(60)
    assert stream.error is None and stream.body.endswith(b"data: [DONE]\n\n")
    assert stream.body.count(b'"content":" tok"') == 300
    assert gw.proc.wait(20) == 0, gw.output()
    assert "Traceback" not in gw.output()


def test_drain_deadline_ends_what_is_still_running(serve: Any, backends: Any) -> None:
    fake, server = backends["a"]
    gw = serve({"a": server.url}, resilience={"drain": {"announce_s": 0.0, "deadline_s": 1.0}})
    stream = StreamReader(gw.url, max_tokens=2000)  # 100 s
    stream.start()
    assert wait_until(lambda: fake.state.active == 1, 10)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0, gw.output()
    stream.join(10)
    assert not stream.body.endswith(b"data: [DONE]\n\n")
    assert wait_until(lambda: fake.state.active == 0 and fake.state.aborted == 1, 10)


def test_config_file_change_is_applied_and_a_bad_file_is_not(serve: Any, backends: Any) -> None:
    urls = {k: s.url for k, (_, s) in backends.items()}
    gw = serve({"a": urls["a"]}, resilience={"reload": {"poll_s": 0.2}})
    assert wait_until(lambda: gw.admin()["a"]["state"] == "fresh", 10)
    write_config(gw.path, 0, urls, resilience={"reload": {"poll_s": 0.2}})
    assert wait_until(lambda: gw.metric("quantroute_config_reloads_total", result="ok") == 1, 10)
    assert set(gw.admin()) == {"a", "b"}
    gw.path.write_text("backends: [{id: broken")  # not YAML
    assert wait_until(lambda: gw.metric("quantroute_config_reloads_total", result="error") == 1, 10)
    assert gw.metric("quantroute_config_last_reload_success") == 0
    assert set(gw.admin()) == {"a", "b"}  # still the last good config
    assert "config reload (file changed) rejected" in gw.output()
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
    )
    assert r.status_code == 200


def test_a_reload_applies_new_client_limits_to_the_next_request(serve: Any, backends: Any) -> None:
    """The body-size limit is read per request from the config in force: a reload that lowers
    it refuses the next large body with 413, where the same body was served before."""
    urls = {"a": backends["a"][1].url}
    gw = serve(urls, resilience={"reload": {"poll_s": 0.2}})
    assert wait_until(lambda: gw.admin()["a"]["state"] == "fresh", 10)
    body = {"model": "auto", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 2}
    assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
    smaller = {"reload": {"poll_s": 0.2}, "client": {"max_body_bytes": 2048}}
    write_config(gw.path, 0, urls, resilience=smaller)
    assert wait_until(lambda: gw.metric("quantroute_config_reloads_total", result="ok") == 1, 10)
    r = httpx.post(gw.url + "/v1/chat/completions", json=body)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"
    small = {"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert httpx.post(gw.url + "/v1/chat/completions", json=small).status_code == 200


def test_sighup_reload_keeps_in_flight_on_their_config_and_drops_removed_gauges(
    serve: Any, backends: Any
) -> None:
    urls = {k: s.url for k, (_, s) in backends.items()}
    settings = {"resilience": {"reload": {"watch": False}}}
    gw = serve(urls, **settings)
    assert wait_until(lambda: all(r["state"] == "fresh" for r in gw.admin().values()), 10)
    stream = StreamReader(gw.url, max_tokens=40, model="a")  # pinned to backend a, 2 s
    stream.start()
    assert wait_until(lambda: backends["a"][0].state.active == 1, 10)
    write_config(gw.path, 0, {"b": urls["b"]}, **settings)
    time.sleep(0.5)
    assert "a" in gw.admin()  # the watcher is off: nothing yet
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: set(gw.admin()) == {"b"}, 10)
    stream.join(30)
    assert stream.body.endswith(b"data: [DONE]\n\n")  # finished on the config it started with
    gauges = (
        "quantroute_backend_up",
        "quantroute_backend_kv_cache_usage",
        "quantroute_backend_gpu_cost_per_hour",
        "quantroute_backend_ejected",
        "quantroute_backend_metric_schema_ok",
        "quantroute_backend_in_flight_requests",
    )

    def a_gauges() -> list[str]:
        lines = httpx.get(gw.url + "/metrics").text.splitlines()
        return [x for x in lines if x.startswith(gauges) and 'backend="a"' in x]

    assert wait_until(lambda: a_gauges() == [], 10), a_gauges()  # its gauges are gone
    assert 'quantroute_requests_total{backend="a"' in httpx.get(gw.url + "/metrics").text
