"""A real Prometheus, with the shipped scrape config and alert rules, scrapes the real gateway and
vLLM-like backends on loopback; every query of the dashboard and the alert rules is run against it.

The scene: the default fleet's gateway config pointed at three fake backends (one healthy, one
under KV pressure with a queue, one whose /metrics fails) plus a target serving a real vLLM
0.32.0 capture with a full KV cache; traffic through the official openai client, some of it to a
group whose only backend is down (503s).
"""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from quantroute.config import parse_config
from quantroute.testing.fake_backend import (
    FakeBackend,
    FakeState,
    ThreadedServer,
    wait_until,
)
from quantroute.testing.gateway_thread import GatewayThread
from quantroute.testing.procs import free_port

from .helpers import (
    DEPLOY,
    FIXTURES,
    adapter_query,
    adapter_rules,
    alert_exprs,
    dashboard_exprs,
)
from .promserver import (
    PrometheusServer,
    Target,
    all_query_problems,
    finite_values,
    query_problems,
)

NAMESPACE = "quantroute"
RECORDED = FIXTURES / "vllm_metrics_busy_constrained_kv.txt"
DOWN_GROUP = "llama3-70b-only"
STATES = {
    "llama3-8b-awq": FakeState(kv_usage=0.30, running=5),
    "qwen25-7b-gptq": FakeState(kv_usage=0.90, running=40, waiting=20),
    "llama3-70b-awq": FakeState(kv_usage=0.10, metrics_status=500),
}


@dataclass
class Scene:
    prom: PrometheusServer
    gateway: GatewayThread
    models: dict[str, str]


def _recorded_vllm() -> web.Application:
    text = RECORDED.read_text()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


KEY = "qr-prometheus-live-key-0123456789abcdefgh"


def _gateway_config(urls: dict[str, str]) -> Any:
    data = yaml.safe_load((DEPLOY / "overlays" / "default" / "gateway.yaml").read_text())
    for backend in data["backends"]:
        backend["url"] = urls[backend["id"]]
    data["groups"].append({"name": DOWN_GROUP, "variants": ["llama3-70b-awq"]})
    # The shipped access section (components/access), with the Secrets replaced by a test key:
    # the scrape goes to the metrics port, traffic carries the key.
    access = data["access"]
    assert access.pop("keys_file") and access.pop("upstream_auth")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    access["keys"] = [{"name": "test", "sha256": digest, "models": ["*"], "admin": True}]
    return parse_config(data)


def _address(url: str) -> str:
    return url.removeprefix("http://")


def _drive_traffic(gateway: GatewayThread) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Say something short."}
    ]
    try:
        for _ in range(12):
            client.chat.completions.create(model="auto", messages=messages, max_tokens=16)
        for _ in range(3):
            stream = client.chat.completions.create(
                model="auto",
                messages=messages,
                max_tokens=16,
                stream=True,
            )
            assert list(stream)
        for _ in range(4):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model=DOWN_GROUP, messages=messages)
            assert caught.value.status_code == 503
    finally:
        client.close()


def _states(gateway: GatewayThread) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {KEY}"}
    rows = httpx.get(gateway.url + "/admin/backends", headers=headers, timeout=5).json()
    rows = rows["backends"]
    return {row["id"]: row["state"] for row in rows}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    work = tmp_path_factory.mktemp("prometheus")
    servers: list[ThreadedServer] = []
    try:
        models = {}
        urls = {}
        config_models = {
            b["id"]: b["served_model_name"]
            for b in yaml.safe_load((DEPLOY / "overlays/default/gateway.yaml").read_text())[
                "backends"
            ]
        }
        for backend_id, state in STATES.items():
            state.served_model_name = config_models[backend_id]
            servers.append(ThreadedServer(FakeBackend(state).app).start())
            urls[backend_id] = servers[-1].url
            models[backend_id] = state.served_model_name
        recorded = ThreadedServer(_recorded_vllm()).start()
        servers.append(recorded)
        with GatewayThread(_gateway_config(urls)) as gateway:
            targets: dict[str, list[Target]] = {
                "quantroute-gateway": [
                    (
                        f"127.0.0.1:{gateway.metrics_port}",  # access.metrics_port, no key
                        {"namespace": NAMESPACE, "pod": "quantroute-gateway-0"},
                    )
                ],
                "vllm": [
                    *(
                        (_address(url), {"namespace": NAMESPACE, "pod": f"vllm-{backend_id}-0"})
                        for backend_id, url in urls.items()
                    ),
                    (_address(recorded.url), {"namespace": NAMESPACE, "pod": "vllm-recorded-0"}),
                ],
            }
            with PrometheusServer(work, targets) as prom:
                assert wait_until(
                    lambda: (
                        _states(gateway)
                        == {
                            "llama3-8b-awq": "fresh",
                            "qwen25-7b-gptq": "fresh",
                            "llama3-70b-awq": "down",
                        }
                    ),
                    timeout_s=20,
                ), _states(gateway)
                assert prom.wait_for(lambda: len(prom.query("up == 1")) == 4, timeout_s=30)
                # Two rounds, scrapes apart: a counter's first sample is where rate() starts.
                _drive_traffic(gateway)
                scraped = float(prom.query("max(timestamp(up))")[0]["value"][1])
                assert prom.wait_for(
                    lambda: float(prom.query("min(timestamp(up))")[0]["value"][1]) > scraped,
                    timeout_s=10,
                    interval_s=0.2,
                )
                _drive_traffic(gateway)
                everything = [*dashboard_exprs(), *alert_exprs()]
                settled = prom.wait_for(
                    lambda: (
                        not query_problems(prom, dashboard_exprs(), finite=True)
                        and not query_problems(prom, everything, finite=False)
                    ),
                    timeout_s=45,
                    interval_s=1.0,
                )
                assert settled, {
                    **query_problems(prom, dashboard_exprs(), finite=True),
                    **query_problems(prom, everything, finite=False),
                    "targets": _target_health(prom),
                }
                yield Scene(prom, gateway, models)
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize(
    ("panel", "expr"), dashboard_exprs(), ids=[t for t, _ in dashboard_exprs()]
)
def test_dashboard_query_returns_data(scene: Scene, panel: str, expr: str) -> None:
    assert _problems_past_a_missed_scrape(scene.prom, [(panel, expr)], finite=True) == {}


@pytest.mark.parametrize(("alert", "expr"), alert_exprs(), ids=[a for a, _ in alert_exprs()])
def test_alert_query_evaluates_on_series_with_data(scene: Scene, alert: str, expr: str) -> None:
    scene.prom.query(expr)  # evaluates without error
    assert _problems_past_a_missed_scrape(scene.prom, [(alert, expr)], finite=False) == {}


def _wait_all_scraped(prom: PrometheusServer) -> None:
    """Until the last scrape of every target that serves metrics succeeded (the fake whose
    /metrics fails aside): the single-shot queries that follow then read live series, not
    ones a scrape that missed its timeout has just marked stale."""
    up = prom.wait_for(lambda: len(prom.query("up == 1")) == 4, timeout_s=15, interval_s=0.2)
    assert up, _target_health(prom)


def _target_health(prom: PrometheusServer) -> list[tuple[str, str, str]]:
    """(job, health, last error) of every scrape target."""
    targets = prom.api("targets")["activeTargets"]
    return [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]


def _problems_past_a_missed_scrape(
    prom: PrometheusServer, exprs: list[tuple[str, str]], *, finite: bool
) -> dict[str, str]:
    """The queries' problems once a scrape that missed its 1 s timeout on a loaded machine has
    been followed by one that did not. A missed scrape marks all of the target's series stale,
    so for about a second every query of it has no data (a CI run saw it for one panel); a
    query that is wrong stays without data and fails after the bounded wait."""
    if prom.wait_for(lambda: not query_problems(prom, exprs, finite=finite), timeout_s=15):
        return {}
    return {**query_problems(prom, exprs, finite=finite), "targets": str(_target_health(prom))}


def test_alert_rules_load_and_evaluate_cleanly(scene: Scene) -> None:
    groups = scene.prom.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == {name for name, _ in alert_exprs()}
    assert [r["name"] for r in rules if r["health"] != "ok"] == []


def _active(scene: Scene) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = scene.prom.api("alerts")["alerts"]
    return alerts


def test_alerts_go_off_for_the_troubles_of_the_scene(scene: Scene) -> None:
    expected = {
        "VLLMKVCacheUsageHigh",
        "VLLMKVCacheFull",
        "VLLMQueueDepthHigh",
        "QuantrouteGateway503RateHigh",
        "QuantrouteGroupWithoutBackend",
        "QuantrouteBackendDown",
    }

    def names() -> set[str]:
        return {a["labels"]["alertname"] for a in _active(scene)}

    assert scene.prom.wait_for(lambda: expected <= names(), timeout_s=20), sorted(names())
    active = _active(scene)
    kv_models = {
        a["labels"]["model_name"]
        for a in active
        if a["labels"]["alertname"] == "VLLMKVCacheUsageHigh"
    }
    assert scene.models["qwen25-7b-gptq"] in kv_models
    assert scene.models["llama3-8b-awq"] not in kv_models
    down = {
        a["labels"]["backend"]
        for a in active
        if a["labels"]["alertname"] == "QuantrouteBackendDown"
    }
    assert down == {"llama3-70b-awq"}
    assert "QuantrouteNoFreshBackend" not in {a["labels"]["alertname"] for a in active}


def test_adapter_rules_give_a_value_per_pod(scene: Scene) -> None:
    """prometheus-adapter's queries, as it would run them for the HPAs of namespace quantroute."""
    _wait_all_scraped(scene.prom)
    by_name = {rule["name"]["as"]: rule for rule in adapter_rules()}
    running = {
        s["metric"]["pod"]: float(s["value"][1])
        for s in scene.prom.query(adapter_query(by_name["vllm_num_requests_running"]))
    }
    # The real vLLM capture runs 7 requests; the fakes what their state says.
    assert running["vllm-recorded-0"] == 7
    assert running["vllm-qwen25-7b-gptq-0"] >= 40
    in_flight = scene.prom.query(adapter_query(by_name["quantroute_in_flight_requests"]))
    assert [s["metric"]["pod"] for s in in_flight] == ["quantroute-gateway-0"]
    assert finite_values(in_flight)


def test_cost_per_million_tokens_matches_the_formula(scene: Scene) -> None:
    """The fleet cost panel: sum of $/h over completion tokens per hour, per million tokens."""
    (fleet_expr,) = [e for t, e in dashboard_exprs() if t == "Fleet cost per 1M completion tokens"]
    _wait_all_scraped(scene.prom)
    (value,) = finite_values(scene.prom.query(fleet_expr))
    dollars = finite_values(
        scene.prom.query("sum(max by (backend) (quantroute_backend_gpu_cost_per_hour))")
    )
    tokens = finite_values(scene.prom.query("sum(rate(quantroute_completion_tokens_total[5m]))"))
    assert dollars == [pytest.approx(1.20 + 1.20 + 4.50)]
    assert value == pytest.approx(dollars[0] / (tokens[0] * 3600) * 1e6, rel=0.05)


# Events the demo's steady workload may never produce; until the gateway's telemetry creates these
# counters at zero for every configured backend and group, they have no series in the demo.
DEMO_MAY_LACK: set[str] = set()  # event counters are created at 0 by the gateway
DEMO_PORTS = (8101, 8102, 8103, 8104)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _demo_gaps(prom: PrometheusServer) -> dict[str, str]:
    """Query problems other than a missing series of an event the demo may not have had."""
    return {
        where: problem
        for where, problem in all_query_problems(prom).items()
        if not set(_missing_names(problem)) <= DEMO_MAY_LACK
    }


def _missing_names(problem: str) -> list[str]:
    if not problem.startswith("no data for "):
        return ["(no finite value)"]
    names: list[str] = ast.literal_eval(problem.removeprefix("no data for "))
    return names


def test_demo_is_scraped_with_the_shipped_config(tmp_path: Path) -> None:
    """`quantroute demo --traffic` (simulated fleet and gateway on loopback), scraped with
    deploy/prometheus/prometheus.yml: every dashboard and alert query has data."""
    if any(_listening(p) for p in DEMO_PORTS):
        pytest.skip("the demo's simulator ports 8101-8104 are taken on this machine")
    port = free_port()
    with (tmp_path / "demo.log").open("wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "quantroute.cli", "demo", "--traffic", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "120"},
        )
    try:
        targets: dict[str, list[Target]] = {
            "quantroute-gateway": [
                (f"127.0.0.1:{port}", {"namespace": NAMESPACE, "pod": "quantroute-gateway-0"})
            ],
            "vllm": [
                (f"127.0.0.1:{p}", {"namespace": NAMESPACE, "pod": f"vllm-{p}"}) for p in DEMO_PORTS
            ],
        }
        with PrometheusServer(tmp_path, targets) as prom:
            settled = prom.wait_for(lambda: not _demo_gaps(prom), timeout_s=120, interval_s=2.0)
            assert settled, (_demo_gaps(prom), (tmp_path / "demo.log").read_text()[-2000:])
            for rule in adapter_rules():
                assert finite_values(prom.query(adapter_query(rule))), rule["name"]["as"]
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=10)
