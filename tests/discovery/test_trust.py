"""Discovery's trust boundary: only pods in the configured namespace whose labels match the
selector become backends, even when the API answers with more (docs/discovery.md, "Trust")."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from quantroute.discovery.scope import parse_selector

from .conftest import Discovered
from .fake_kube import FakeKube, vllm_pod


def _strangers(kube: FakeKube) -> None:
    """Pods that claim to be vLLM backends but are outside the scope ``ns=default``,
    ``quantroute.io/role=backend``."""
    pod = vllm_pod("evil-ns", port=8101)
    pod["metadata"]["namespace"] = "attacker"
    kube.put(pod)
    kube.put(vllm_pod("no-role", port=8102, without=("quantroute.io/role",)))
    kube.put(vllm_pod("other-role", port=8103, labels={"quantroute.io/role": "backend-ish"}))
    kube.put(vllm_pod("not-ready", port=8104, ready=False))
    kube.put(vllm_pod("pending", port=8105, phase="Pending", ready=False))


@pytest.mark.parametrize("leaky", [False, True], ids=["api", "leaky-api"])
async def test_pods_outside_the_scope_never_join(
    discovered: Discovered, leaky: bool, caplog: pytest.LogCaptureFixture
) -> None:
    kube = discovered.kube
    kube.leaky = leaky
    kube.put(vllm_pod("vllm-a", port=8001))
    _strangers(kube)
    with caplog.at_level(logging.WARNING, logger="quantroute.discovery"):
        recorder = await discovered.start()
        assert set(recorder.current) == {"vllm-a"}
        # strangers arriving through the watch do not join either; a real pod does
        twin = vllm_pod("vllm-b", port=8106)
        twin["metadata"]["namespace"] = "attacker"
        kube.put(twin)
        kube.put(vllm_pod("vllm-c", port=8107, labels={"quantroute.io/role": "other"}))
        kube.put(vllm_pod("vllm-d", port=8108))
        current = await recorder.wait_ids("vllm-a", "vllm-d")
    assert all(
        call_ids <= {"vllm-a", "vllm-d"} for call_ids in ({b.id for b in c} for c in recorder.calls)
    )
    assert current["vllm-d"].url.endswith(":8108")
    # the gateway asked for its namespace and selector only
    assert {r["labelSelector"] for r in kube.requests} == {"quantroute.io/role=backend"}
    if leaky:
        assert "outside the scope" in caplog.text and "attacker/evil-ns" in caplog.text


async def test_a_stranger_cannot_displace_a_backend_of_the_same_name(
    discovered: Discovered,
) -> None:
    kube = discovered.kube
    kube.leaky = True
    kube.put(vllm_pod("vllm-a", port=8001))
    recorder = await discovered.start()
    assert set(recorder.current) == {"vllm-a"}
    twin = vllm_pod("vllm-a", port=8999, ready=False)
    twin["metadata"]["namespace"] = "attacker"
    kube.put(twin)
    kube.delete("vllm-a", namespace="attacker")
    kube.put(vllm_pod("vllm-b", port=8002))
    current = await recorder.wait_ids("vllm-a", "vllm-b")
    assert current["vllm-a"].url.endswith(":8001")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a in (x, y),b", {"a": "y", "b": "1"}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a=b,c=d", {"a": "b"}, False),
    ],
)
def test_selector_terms(selector: str, labels: dict[str, Any], expected: bool) -> None:
    assert parse_selector(selector)(labels) is expected
