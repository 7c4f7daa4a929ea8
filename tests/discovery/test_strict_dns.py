"""Strict DNS discovery against a real DNS server on loopback whose records change under it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from quantroute.config import BackendConfig, DnsDiscoveryConfig, parse_config
from quantroute.discovery import start_discovery
from quantroute.discovery.strict_dns import DnsDiscovery, expand, start_dns_discovery, templates
from quantroute.errors import ConfigError

from .conftest import Recorder
from .dns_server import LoopbackDns

TEMPLATE = BackendConfig(
    id="llama",
    url="http://vllm-llama.quantroute.test:8000",
    served_model_name="meta/llama",
    variant="llama3-8b-awq",
    quantization="awq",
    max_seq_len=8192,
    capacity=256,
    gpu="L40S",
    gpu_cost_per_hour=1.2,
)
NAME = "vllm-llama.quantroute.test"


@pytest.fixture
def server() -> Iterator[LoopbackDns]:
    with LoopbackDns() as dns:
        yield dns


def dns_config(server: LoopbackDns, **overrides: Any) -> DnsDiscoveryConfig:
    settings: dict[str, Any] = {
        "nameservers": ["127.0.0.1"],
        "port": server.port,
        "interval_s": 0.05,
        "timeout_s": 0.5,
    }
    return DnsDiscoveryConfig(**(settings | overrides))


class Running:
    def __init__(self) -> None:
        self.handles: list[DnsDiscovery] = []

    async def start(
        self, cfg: DnsDiscoveryConfig, backends: list[BackendConfig] | None = None
    ) -> Recorder:
        recorder = Recorder()
        self.handles.append(await start_dns_discovery(cfg, backends or [TEMPLATE], recorder))
        return recorder


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    found = Running()
    try:
        yield found
    finally:
        for handle in found.handles:
            await handle.aclose()


def ids(*addresses: str) -> list[str]:
    return [f"llama-{a}" for a in addresses]


async def test_every_address_is_one_backend_with_the_templates_settings(
    server: LoopbackDns, running: Running
) -> None:
    server.zone.set(NAME, "10.0.0.2", "10.0.0.1")
    recorder = await running.start(dns_config(server))
    # The first round is done when start returns: no waiting for the first interval.
    assert sorted(recorder.current) == ids("10.0.0.1", "10.0.0.2")
    backend = recorder.current["llama-10.0.0.1"]
    assert backend.url == "http://10.0.0.1:8000"
    assert backend.model_dump(exclude={"id", "url"}) == TEMPLATE.model_dump(exclude={"id", "url"})


async def test_records_that_come_and_go_are_followed(server: LoopbackDns, running: Running) -> None:
    server.zone.set(NAME, "10.0.0.1")
    recorder = await running.start(dns_config(server))
    assert list(recorder.current) == ids("10.0.0.1")

    server.zone.set(NAME, "10.0.0.1", "10.0.0.2", "10.0.0.3")  # the HPA added two pods
    await recorder.wait_ids(*ids("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    server.zone.set(NAME, "10.0.0.3")  # two went (scale-down, or no longer Ready)
    await recorder.wait_ids(*ids("10.0.0.3"))
    server.zone.set(NAME)  # the Service exists with no Ready pod
    await recorder.wait_ids()
    server.zone.set(NAME, "10.0.0.4")
    await recorder.wait_ids(*ids("10.0.0.4"))
    server.zone.remove(NAME)  # NXDOMAIN
    await recorder.wait_ids()
    # Only changes are reported: every call differs from the one before.
    assert all(a != b for a, b in zip(recorder.calls, recorder.calls[1:], strict=False))


@pytest.mark.parametrize("failure", ["servfail", "silent"])
async def test_a_failing_resolver_keeps_the_last_addresses(
    server: LoopbackDns, running: Running, failure: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.zone.set(NAME, "10.0.0.1", "10.0.0.2")
    recorder = await running.start(dns_config(server, timeout_s=0.2))
    calls = len(recorder.calls)
    caplog.set_level(logging.INFO, "quantroute.discovery")
    server.zone.fail(failure)
    server.zone.set(NAME, "10.0.0.9")  # not visible while the resolver fails
    before = sum(server.zone.queries.values())
    assert await _until(lambda: sum(server.zone.queries.values()) >= before + 3, 5.0)
    assert len(recorder.calls) == calls
    assert sorted(recorder.current) == ids("10.0.0.1", "10.0.0.2")
    failures = [r for r in caplog.records if "failed, keeping 2 address(es)" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]  # once, not per round

    server.zone.fail(None)
    await recorder.wait_ids(*ids("10.0.0.9"))
    assert any("resolves again" in r.getMessage() for r in caplog.records)


async def test_an_answer_too_long_for_udp_is_fetched_over_tcp(
    server: LoopbackDns, running: Running
) -> None:
    addresses = [f"10.0.1.{i}" for i in range(1, 41)]  # 40 records: more than 512 bytes
    server.zone.set(NAME, *addresses)
    recorder = await running.start(dns_config(server))
    assert sorted(recorder.current) == sorted(ids(*addresses))
    assert server.zone.queries["tcp"] >= 1


async def test_aaaa_records_give_bracketed_urls(server: LoopbackDns, running: Running) -> None:
    server.zone.set(NAME, "fd00::2", "10.0.0.1")
    recorder = await running.start(dns_config(server, record_type="AAAA"))
    assert list(recorder.current) == ["llama-fd00--2"]
    assert recorder.current["llama-fd00--2"].url == "http://[fd00::2]:8000"


async def test_a_name_that_does_not_resolve_at_start_has_no_backend(
    server: LoopbackDns, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "quantroute.discovery")
    recorder = await running.start(dns_config(server))
    assert recorder.calls == [[]]
    assert any(f"{NAME} (backend llama) has no address" in r.getMessage() for r in caplog.records)


async def test_the_gateway_config_picks_templates_and_keeps_other_static_backends(
    server: LoopbackDns,
) -> None:
    server.zone.set(NAME, "10.0.0.1", "10.0.0.2")
    pinned = TEMPLATE.model_copy(update={"id": "pinned", "url": "http://127.0.0.1:9000"})
    config = parse_config(
        {
            "backends": [TEMPLATE.model_dump(mode="json"), pinned.model_dump(mode="json")],
            "discovery": {"dns": dns_config(server).model_dump(mode="json")},
        }
    )
    assert templates(config) == [TEMPLATE]  # an IP literal is not resolved
    recorder = Recorder()
    fleet = await start_discovery(config, recorder)
    try:
        assert [b.id for b in recorder.calls[-1]] == ["pinned", *ids("10.0.0.1", "10.0.0.2")]
        assert recorder.calls[0] == recorder.calls[-1]  # the template never showed up itself
    finally:
        await fleet.aclose()


def test_templates_can_be_named_and_unknown_names_are_a_config_error() -> None:
    other = TEMPLATE.model_copy(update={"id": "other", "url": "http://vllm-other:8000"})
    data: dict[str, Any] = {
        "backends": [TEMPLATE.model_dump(mode="json"), other.model_dump(mode="json")],
        "discovery": {"dns": {"backends": ["other"]}},
    }
    assert templates(parse_config(data)) == [other]
    assert templates(parse_config({**data, "discovery": None})) == []
    data["discovery"]["dns"]["backends"] = ["other", "typo"]
    with pytest.raises(ConfigError, match=r"discovery.dns.backends names unknown .*'typo'"):
        parse_config(data)


def test_expand_is_one_backend_per_distinct_address_sorted() -> None:
    template = TEMPLATE.model_copy(update={"url": "https://vllm:8443/base"})
    out = expand(template, ["10.0.0.2", "10.0.0.1", "10.0.0.2"])
    assert [(b.id, b.url) for b in out] == [
        ("llama-10.0.0.1", "https://10.0.0.1:8443/base"),
        ("llama-10.0.0.2", "https://10.0.0.2:8443/base"),
    ]
    assert expand(template, []) == []
    # A template without a variant is its own variant (its id): the replicas stay in its groups.
    bare = template.model_copy(update={"variant": ""})
    assert {b.variant_id for b in expand(bare, ["10.0.0.1", "10.0.0.2"])} == {"llama"}


async def _until(predicate: Any, timeout_s: float) -> bool:
    from quantroute.testing.fake_backend import async_wait_until

    return await async_wait_until(predicate, timeout_s)
