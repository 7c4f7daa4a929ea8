"""Discovery through the real kubernetes_asyncio client against the fake API over loopback HTTP."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from quantroute.config import KubernetesDiscoveryConfig
from quantroute.discovery import Backoff, start_kubernetes_discovery
from quantroute.errors import ConfigError
from quantroute.testing.fake_backend import async_wait_until
from quantroute.testing.procs import free_port

from .conftest import FAST, Discovered
from .fake_kube import vllm_pod

NOT_OURS = {"quantroute.io/role": "other"}


async def test_pods_that_appear_join_and_the_first_list_is_reported_at_start(
    discovered: Discovered,
) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    kube.put(vllm_pod("elsewhere", port=8009, labels=NOT_OURS))  # the selector leaves it out
    recorder = await discovered.start()
    assert [b.id for b in recorder.calls[0]] == ["vllm-a"]  # before start returned
    kube.put(vllm_pod("vllm-b", port=8002, model="model-b", variant="qwen25-7b-gptq"))
    current = await recorder.wait_ids("vllm-a", "vllm-b")
    assert current["vllm-b"].url == "http://127.0.0.1:8002"
    assert (current["vllm-b"].served_model_name, current["vllm-b"].variant) == (
        "model-b",
        "qwen25-7b-gptq",
    )
    assert {r["labelSelector"] for r in kube.requests} == {"quantroute.io/role=backend"}
    assert kube.count("list") == 1  # one list, then the watch carried the change


async def test_an_empty_namespace_is_reported_as_no_backends(discovered: Discovered) -> None:
    recorder = await discovered.start()
    assert recorder.calls == [[]]


async def test_readiness_decides_membership(discovered: Discovered) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    kube.put(vllm_pod("vllm-b", port=8002, phase="Pending", ip=None, ready=False))
    recorder = await discovered.start()
    assert set(recorder.current) == {"vllm-a"}
    kube.put(vllm_pod("vllm-b", port=8002, ready=False))  # running, probe not passing yet
    kube.put(vllm_pod("vllm-b", port=8002))
    await recorder.wait_ids("vllm-a", "vllm-b")
    kube.put(vllm_pod("vllm-a", port=8001, ready=False))
    await recorder.wait_ids("vllm-b")
    kube.put(vllm_pod("vllm-a", port=8001))
    await recorder.wait_ids("vllm-a", "vllm-b")
    kube.put(vllm_pod("vllm-b", port=8002, deleting=True))  # terminating: leaves at once
    await recorder.wait_ids("vllm-a")


async def test_settings_changes_update_the_backend_and_other_changes_are_not_reported(
    discovered: Discovered,
) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    recorder = await discovered.start()
    kube.put(vllm_pod("vllm-a", port=8001, annotations={"example.com/owner": "team-x"}))
    kube.put(vllm_pod("vllm-a", port=8001, annotations={"quantroute.io/max-num-seqs": "64"}))
    assert await async_wait_until(lambda: recorder.current["vllm-a"].capacity == 64, 5.0)
    assert len(recorder.calls) == 2  # the owner annotation changed nothing the gateway uses
    kube.put(vllm_pod("vllm-a", port=8003, annotations={"quantroute.io/max-num-seqs": "64"}))
    assert await async_wait_until(
        lambda: recorder.current["vllm-a"].url == "http://127.0.0.1:8003", 5.0
    )
    assert len(recorder.calls) == 3


async def test_deleted_pods_and_pods_leaving_the_selector_leave(discovered: Discovered) -> None:
    kube = discovered.kube
    for n in (1, 2, 3):
        kube.put(vllm_pod(f"vllm-{n}", port=8000 + n))
    recorder = await discovered.start()
    kube.delete("vllm-1")
    await recorder.wait_ids("vllm-2", "vllm-3")
    kube.put(vllm_pod("vllm-2", port=8002, labels=NOT_OURS))  # relabelled: DELETED for the watch
    await recorder.wait_ids("vllm-3")


async def test_pods_missing_required_keys_are_skipped_with_one_warning(
    discovered: Discovered, caplog: pytest.LogCaptureFixture
) -> None:
    kube = discovered.kube
    caplog.set_level(logging.WARNING, logger="quantroute.discovery")
    kube.put(vllm_pod("no-variant", port=8001, without=("quantroute.io/variant",)))
    kube.put(vllm_pod("no-len", port=8002, without=("quantroute.io/max-model-len",)))
    kube.put(vllm_pod("good", port=8003))
    recorder = await discovered.start()
    assert set(recorder.current) == {"good"}
    kube.put(vllm_pod("no-len", port=8002, ready=False, without=("quantroute.io/max-model-len",)))
    kube.put(vllm_pod("no-len", port=8002, annotations={"quantroute.io/max-model-len": "4096"}))
    current = await recorder.wait_ids("good", "no-len")
    assert current["no-len"].max_seq_len == 4096
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "discovery: skipping pod default/no-len: missing annotation quantroute.io/max-model-len",
        "discovery: skipping pod default/no-variant: missing label quantroute.io/variant",
    ]  # one each, though no-len changed again while still broken


async def test_a_dropped_watch_resumes_from_the_last_resource_version(
    discovered: Discovered,
) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    recorder = await discovered.start()
    last = kube.put(vllm_pod("vllm-a", port=8001, annotations={"quantroute.io/gpu": "H100"}))
    assert await async_wait_until(lambda: recorder.current["vllm-a"].gpu == "H100", 5.0)
    kube.drop_watches()
    kube.put(vllm_pod("vllm-b", port=8002))  # happens while no watch may be open
    await recorder.wait_ids("vllm-a", "vllm-b")
    watches = [r for r in kube.requests if r["kind"] == "watch"]
    assert watches[-1]["resourceVersion"] == str(last)
    assert kube.count("list") == 1  # the history covered the gap: no new list was needed


async def test_410_gone_lists_again_and_recovers(discovered: Discovered) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    recorder = await discovered.start()
    assert await async_wait_until(lambda: kube.open_watches == 1, 5.0)
    kube.put(vllm_pod("vllm-a", port=8001, ready=False), notify=False)
    kube.put(vllm_pod("vllm-b", port=8002), notify=False)
    kube.compact()
    kube.drop_watches()
    await recorder.wait_ids("vllm-b")
    assert kube.expired_answers == 1 and kube.count("list") == 2
    kube.put(vllm_pod("vllm-c", port=8003))  # and the new watch works
    await recorder.wait_ids("vllm-b", "vllm-c")


async def test_api_errors_are_retried_with_backoff_until_the_api_answers(
    discovered: Discovered,
) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    kube.fail_next(500, times=3)
    recorder = await discovered.start()
    assert recorder.calls == []  # the first list failed; start did not wait for a success
    await recorder.wait_ids("vllm-a")
    assert kube.count("list") == 4
    kube.fail_next(503, times=2)  # the next watch and list fail too
    kube.drop_watches()
    kube.put(vllm_pod("vllm-b", port=8002))
    await recorder.wait_ids("vllm-a", "vllm-b")


async def test_resync_lists_again_and_repairs_what_the_watch_missed(
    discovered: Discovered,
) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    recorder = await discovered.start(resync_s=0.5)
    kube.put(vllm_pod("vllm-b", port=8002), notify=False)  # no event will ever tell
    await recorder.wait_ids("vllm-a", "vllm-b")
    assert kube.count("list") >= 2


async def test_aclose_stops_watching_and_closes_the_connection(discovered: Discovered) -> None:
    kube = discovered.kube
    await discovered.start()
    assert await async_wait_until(lambda: kube.open_watches == 1, 5.0)
    assert discovered.handle is not None
    await discovered.handle.aclose()
    discovered.handle = None
    assert await async_wait_until(lambda: kube.open_watches == 0, 5.0)
    requests = len(kube.requests)
    kube.put(vllm_pod("late", port=8001))
    assert not await async_wait_until(lambda: len(kube.requests) > requests, 0.3)


async def test_a_kubeconfig_file_supplies_the_server_and_credentials(
    discovered: Discovered, tmp_path: Path
) -> None:
    kube = discovered.kube
    kube.put(vllm_pod("vllm-a", port=8001))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": discovered.server.url}}],
                "users": [{"name": "gw", "user": {"token": "s3cret"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gw"}}],
                "current-context": "fake",
            }
        )
    )
    cfg = KubernetesDiscoveryConfig(kubeconfig=str(kubeconfig))
    handle = await start_kubernetes_discovery(cfg, discovered.recorder)
    try:
        await discovered.recorder.wait_ids("vllm-a")
        assert kube.requests[0]["authorization"] == "Bearer s3cret"
    finally:
        await handle.aclose()


async def test_missing_credentials_are_a_config_error(tmp_path: Path) -> None:
    cfg = KubernetesDiscoveryConfig(kubeconfig=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="cannot load Kubernetes credentials"):
        await start_kubernetes_discovery(cfg, lambda _: None)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0)
    assert [backoff.delay(n) for n in (0, 1, 2, 3, 7, 8, 1000)] == [0, 0.5, 1, 2, 30, 30, 30]


async def test_an_unreachable_api_server_is_retried_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = KubernetesDiscoveryConfig(api_url=f"http://127.0.0.1:{free_port()}")
    calls: list[object] = []
    handle = await start_kubernetes_discovery(cfg, calls.append, backoff=FAST)
    try:
        assert await async_wait_until(
            lambda: sum("listing again" in r.getMessage() for r in caplog.records) >= 2, 5.0
        )
        assert calls == []
    finally:
        await handle.aclose()


async def test_without_a_namespace_the_gateway_pods_own_namespace_is_watched(
    discovered: Discovered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renaming the overlay's namespace needs no config change (POD_NAMESPACE, downward API)."""
    pod = vllm_pod("vllm-a", port=8001)
    pod["metadata"]["namespace"] = "ml"
    discovered.kube.put(pod)
    discovered.kube.put(vllm_pod("vllm-default", port=8002))
    monkeypatch.setenv("POD_NAMESPACE", "ml")
    recorder = await discovered.start(namespace=None)
    assert [b.id for b in recorder.calls[0]] == ["vllm-a"]


def test_own_namespace_from_the_environment_then_the_service_account(tmp_path: Path) -> None:
    from quantroute.discovery._kube import own_namespace

    account = tmp_path / "namespace"
    account.write_text("team-a\n")
    assert own_namespace({"POD_NAMESPACE": "ml"}, str(account)) == "ml"
    assert own_namespace({}, str(account)) == "team-a"
    assert own_namespace({}, str(tmp_path / "missing")) == "default"
