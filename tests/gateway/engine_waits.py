"""Waiting on a simulated engine to stop a request a client left, with a failure that says
what the engine did instead (aborted late, or ran the request to its end)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from quantroute.testing.fake_backend import wait_until

ABORT_TIMEOUT_S = 60.0
"""Bounded, and long: the wait ends as soon as the abort is counted. A request left running
ends by ``length`` and never counts as an abort, so a longer wait cannot hide a missed one."""


def engine_counts(server_url: str) -> dict[str, float]:
    """The server's finished requests by reason, and those running."""
    text = httpx.get(server_url + "/metrics", timeout=30).text
    counts = {"abort": 0.0, "stop": 0.0, "length": 0.0, "running": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vllm:request_success_total":
                reason = s.labels.get("finished_reason", "")
                if reason in counts:
                    counts[reason] += s.value
            elif s.name == "vllm:num_requests_running":
                counts["running"] += s.value
    return counts


def aborts_when_idle(server_url: str) -> float:
    """The server's abort count once it runs nothing: requests an earlier test left (a stream
    closed early) have been aborted by then, so they cannot land during the next test's wait.
    AssertionError when the server is still busy after :data:`ABORT_TIMEOUT_S`."""
    last: dict[str, float] = {}

    def idle() -> bool:
        last.update(engine_counts(server_url))
        return last["running"] == 0

    if not wait_until(idle, ABORT_TIMEOUT_S, interval_s=0.05):
        raise AssertionError(f"still running requests after {ABORT_TIMEOUT_S:.0f} s: {last}")
    return last["abort"]


def wait_for_abort(server_url: str, aborted_before: float) -> None:
    """Until the server has counted one more abort and runs nothing; AssertionError naming
    its last counts when it has not within :data:`ABORT_TIMEOUT_S`."""
    last: dict[str, float] = {}

    def stopped() -> bool:
        last.update(engine_counts(server_url))
        return last["abort"] == aborted_before + 1 and last["running"] == 0

    if not wait_until(stopped, ABORT_TIMEOUT_S, interval_s=0.05):
        raise AssertionError(
            f"no abort counted within {ABORT_TIMEOUT_S:.0f} s (aborts before: "
            f"{aborted_before:.0f}); last counts {last}"
        )
