"""Flow control in the replay: a saturated group's requests wait in the gateway's queue (the
same FlowQueue the gateway uses), interactive before batch, bounded in length and wait, or are
refused at once (``reject``), in simulated time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quantroute.config import GatewayConfig, parse_config
from quantroute.core.model import LatencyClass
from quantroute.replay.measures import summarise
from quantroute.replay.simulate import RequestResult, replay
from quantroute.replay.trace import TraceRow
from quantroute.state.matrix_source import load_matrix

B, INTER = LatencyClass.BATCH, LatencyClass.INTERACTIVE


def _config(mode: str, **flow: Any) -> GatewayConfig:
    """One simulated 70B AWQ (105k KV tokens) behind the group ``auto``, default filters: a
    request that would take the KV cache (the gateway's own unseen dispatches included) over
    0.85 finds the group saturated."""
    backend = {"id": "big", "url": "http://127.0.0.1:9", "served_model_name": "llama3-70b-awq",
               "variant": "llama3-70b-awq", "max_seq_len": 8192, "capacity": 128}  # fmt: skip
    return parse_config(
        {
            "backends": [backend],
            "groups": [{"name": "auto", "variants": ["llama3-70b-awq"]}],
            "policy": {"scrape_interval_s": 0.5, "flow_control": {"on_saturation": mode, **flow}},
        },
        "<test>",
    )


def _burst() -> list[TraceRow]:
    """50 batch requests in 0.1 s, then 20 interactive ones from 0.2 s, while the batch ones
    still wait: each holds up to 3,000 + 2,048 KV tokens, so ~17 fit between two scrapes."""
    batch = [TraceRow(f"r{i:03d}", round(i * 0.002, 4), "chat", 3000, 2048, 600, B)
             for i in range(50)]  # fmt: skip
    inter = [TraceRow(f"r{50 + i:03d}", round(0.2 + i * 0.01, 4), "chat", 3000, 2048, 600, INTER)
             for i in range(20)]  # fmt: skip
    return batch + inter


def _dispatched(x: RequestResult) -> float:
    assert x.queued_s is not None
    return x.row.t + x.queued_s


def test_queue_serves_the_requests_reject_refuses_on_a_saturated_fleet() -> None:
    rows = _burst()
    rejected, queued = replay(rows, _config("reject"), None), replay(rows, _config("queue"), None)
    r = summarise(rejected, _config("reject"), None)
    q = summarise(queued, _config("queue"), None)
    assert r.refused >= 30 and r.served == 70 - r.refused  # saturated: refused at once
    assert all(x.status == 503 and x.queued_s is None for x in rejected.results if not x.ok)
    assert q.refused == 0 and q.served == 70  # the same requests waited for room: all served
    waited = [x for x in queued.results if x.queued_s]
    assert len(waited) >= r.refused
    for x in waited:  # the wait in the gateway is part of the TTFT
        assert x.ttft is not None and x.queued_s is not None and x.ttft > x.queued_s


def test_interactive_requests_leave_the_queue_before_batch_ones_queued_earlier() -> None:
    run = replay(_burst(), _config("queue"), None)
    queued = [x for x in run.results if x.queued_s]
    # pairs (interactive i, batch b): b was waiting when i arrived
    pairs = [
        (i, b) for i in queued for b in queued
        if i.row.latency_class is INTER and b.row.latency_class is B
        and b.row.t < i.row.t < _dispatched(b)
    ]  # fmt: skip
    assert len(pairs) >= 100
    assert all(_dispatched(i) <= _dispatched(b) for i, b in pairs)
    assert sum(_dispatched(i) < _dispatched(b) for i, b in pairs) >= len(pairs) // 2
    # with every request batch, the queue is first come, first served instead
    fifo = replay([TraceRow(r.id, r.t, r.task, r.prompt_tokens, r.max_tokens, r.output_tokens, B)
                   for r in _burst()], _config("queue"), None)  # fmt: skip
    order = [_dispatched(x) for x in fifo.results if x.queued_s]
    assert order == sorted(order) and len(order) >= 30


def test_the_queue_bounds_refuse_with_the_configured_status() -> None:
    rows = _burst()
    short = replay(rows, _config("queue", max_queue_length=5, reject_status=429), None)
    full = [x for x in short.results if x.refusal == "queue_full"]
    assert full and all(x.status == 429 and not x.ok for x in full)
    # batch requests already waiting were evicted by interactive ones (they had waited); an
    # interactive one is refused only on arrival, the queue full of its equals
    assert any(x.row.latency_class is B and x.queued_s for x in full)
    assert all(x.queued_s == 0.0 for x in full if x.row.latency_class is INTER)
    hurried = replay(rows, _config("queue", max_wait_s=0.3), None)
    timed_out = [x for x in hurried.results if x.refusal == "queue_timeout"]
    assert timed_out and all(
        x.status == 503 and x.queued_s == pytest.approx(0.3) for x in timed_out
    )
    assert summarise(hurried, _config("queue"), None).refused == len(timed_out)


def test_downgrade_sends_saturated_interactive_requests_below_the_floor_and_queues_batch() -> None:
    """The 70B meets the chat floor (0.9), the 8B AWQ does not: with the 70B saturated,
    ``downgrade`` serves interactive requests on the 8B at once (marked), batch ones wait."""
    matrix_path = (Path(__file__).resolve().parents[2] / "src" / "quantroute" / "demo"
                   / "capability_matrix.json")  # fmt: skip

    def config(mode: str) -> GatewayConfig:
        backends = [
            {"id": v, "url": "http://127.0.0.1:9", "served_model_name": v, "variant": v,
             "max_seq_len": 8192, "capacity": 128}
            for v in ("llama3-70b-awq", "llama3-8b-awq")
        ]  # fmt: skip
        return parse_config(
            {"backends": backends, "matrix_path": str(matrix_path),
             "groups": [{"name": "auto", "variants": ["llama3-70b-awq", "llama3-8b-awq"],
                         "quality_floor": 0.9, "on_saturation": mode}],
             "policy": {"scrape_interval_s": 0.5}},
            "<test>",
        )  # fmt: skip

    matrix = load_matrix(matrix_path)
    queued = replay(_burst(), config("queue"), matrix)
    down = replay(_burst(), config("downgrade"), matrix)
    assert not any(x.downgraded for x in queued.results)
    assert all(x.variant == "llama3-70b-awq" for x in queued.results if x.ok)
    lowered = [x for x in down.results if x.downgraded]
    assert lowered and all(x.variant == "llama3-8b-awq" and x.ok for x in lowered)
    assert all(x.row.latency_class is INTER and "downgrade" in x.relaxed for x in lowered)
    assert all(x.variant == "llama3-70b-awq" for x in down.results if x.row.latency_class is B)
    assert summarise(down, config("downgrade"), matrix).downgraded == len(lowered)
    # served at once on the 8B instead of waiting for the 70B: a lower interactive p99
    q = summarise(queued, config("queue"), matrix).ttft_p99_s
    d = summarise(down, config("downgrade"), matrix).ttft_p99_s
    assert q is not None and d is not None and d < q
