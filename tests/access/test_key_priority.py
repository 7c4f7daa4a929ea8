"""A key's ``priority`` orders its requests in the flow-control queue (same latency class)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from quantroute.testing.fake_backend import FakeState, wait_until

from .fake_stack import GateFactory, key_row

LOW = "qr-priority-low-key-0123456789abcdefghij"
HIGH = "qr-priority-high-key-0123456789abcdefghij"
ADMIN = "qr-priority-admin-key-0123456789abcdefgh"


def test_a_higher_priority_key_is_dispatched_first_from_the_queue(make_gate: GateFactory) -> None:
    gate_open = threading.Event()
    # Room for one request at a time once usage drops to 0.5 (10 blocks x 16 tokens): see
    # tests/gateway/test_flow_control.py.
    state = FakeState(served_model_name="model-a", kv_usage=0.99, num_gpu_blocks=10, gate=gate_open)
    gate = make_gate(
        {
            "keys": [
                key_row("low", LOW),
                key_row("high", HIGH, priority=5),
                key_row("ops", ADMIN, admin=True),
            ]
        },
        states={"a": state},
    )

    def depth() -> object:
        return gate.get(ADMIN, "/admin/flow").json()["groups"].get("auto", {}).get("depth", 0)

    def ask(key: str, text: str) -> str:
        raw = gate.client(key, timeout=30).chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}], max_tokens=100
        )
        return raw.headers["x-quantroute-backend"]

    try:
        with ThreadPoolExecutor(2) as pool:
            low = pool.submit(ask, LOW, "from the low key")
            assert wait_until(lambda: depth() == 1, 10)
            high = pool.submit(ask, HIGH, "from the high key")
            assert wait_until(lambda: depth() == 2, 10)
            state.kv_usage = 0.5
            assert wait_until(lambda: len(state.received) >= 1, 10)
            assert state.received[0]["messages"][0]["content"] == "from the high key"
            gate_open.set()
            assert low.result(timeout=30) == high.result(timeout=30) == "a"
    finally:
        gate_open.set()
    assert [r["messages"][0]["content"] for r in state.received] == [
        "from the high key",
        "from the low key",
    ]
