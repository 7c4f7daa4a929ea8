"""The decision log written by the real gateway over HTTP on loopback, in front of the
simulator: one record per request, features and outcome only, readable back as a trace."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from quantroute.config import GatewayConfig, parse_config
from quantroute.decisionlog.record import DecisionRecord
from quantroute.replay.trace import load_trace
from quantroute.sim.fleet import FleetHandle, SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

MARKER = "zanzibar-quokka-7731"
FIELDS = set(DecisionRecord.__dataclass_fields__)


@pytest.fixture
def fleet() -> Iterator[FleetHandle]:
    specs = [
        SimBackendSpec(id="small", profile="llama3-8b-awq", max_model_len=2048, max_num_seqs=8),
        SimBackendSpec(id="big", profile="qwen25-7b-gptq", max_model_len=8192, max_num_seqs=16),
    ]
    with run_fleet_in_thread(
        SimFleetConfig(time_scale=5.0, seed=1, backends=specs), answer_key={}
    ) as handle:
        yield handle


def _config(fleet: FleetHandle, log: Path) -> GatewayConfig:
    backends = [
        {"id": "small", "url": fleet.urls["small"], "served_model_name": "llama3-8b-awq",
         "max_seq_len": 2048, "capacity": 8},
        {"id": "big", "url": fleet.urls["big"], "served_model_name": "qwen25-7b-gptq",
         "max_seq_len": 8192, "capacity": 16},
    ]  # fmt: skip
    return parse_config({
        "backends": backends,
        "groups": [{"name": "auto", "variants": ["small", "big"]}],
        "policy": {"scrape_interval_s": 0.2},
        "decision_log": {"path": str(log), "max_bytes": 1_000_000, "backups": 2},
    })  # fmt: skip


def _seconds(value: object) -> float:
    """A number of the JSON record (the test fails on anything else)."""
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    return float(value)


def _records(path: Path, n: int) -> list[dict[str, object]]:
    assert wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= n, 10.0)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_request_is_logged_with_features_and_outcome_but_no_text(
    fleet: FleetHandle, tmp_path: Path
) -> None:
    log = tmp_path / "decisions.jsonl"
    with (
        GatewayThread(_config(fleet, log)) as gateway,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="t", max_retries=0) as client,
    ):
        assert wait_until(lambda: _fresh(gateway.url), 10.0)
        prompt = f"Please write a python function that adds two numbers. {MARKER}"
        stream = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=12,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        usage = [c.usage for c in stream if c.usage is not None][-1]
        whole = client.chat.completions.create(
            model="auto", max_tokens=5, messages=[{"role": "user", "content": f"Hi {MARKER}"}],
            extra_headers={"x-quantroute-priority": "batch"},
        )  # fmt: skip
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="auto", max_tokens=100, messages=[{"role": "user", "content": "x " * 20000}]
            )
        streamed, plain, refused = _records(log, 3)
    assert MARKER not in log.read_text()
    assert all(set(r) == FIELDS for r in (streamed, plain, refused))
    assert streamed["task"] == "coding" and streamed["stream"] is True
    assert streamed["status"] == 200 and streamed["outcome"] == "routed"
    assert streamed["backend"] in ("small", "big") and streamed["reason"] == "scored"
    assert streamed["completion_tokens"] == usage.completion_tokens
    assert 0 < _seconds(streamed["ttft_s"]) <= _seconds(streamed["duration_s"])
    assert abs(_seconds(streamed["ts"]) - time.time()) < 60
    assert plain["latency_class"] == "batch" and plain["max_tokens"] == 5
    assert whole.usage is not None
    assert plain["completion_tokens"] == whole.usage.completion_tokens
    assert refused["outcome"] == "too_long" and refused["status"] == 400
    assert refused["rejected"] == {"small": ["context"], "big": ["context"]}
    rows = load_trace(log)
    assert [r.output_tokens for r in rows] == [
        usage.completion_tokens,
        plain["completion_tokens"],
        None,
    ]


def _fresh(url: str) -> bool:
    import httpx

    rows = httpx.get(url + "/admin/backends").json()["backends"]
    return all(r["state"] == "fresh" for r in rows)
