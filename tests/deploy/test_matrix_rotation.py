"""Rotating the capability matrix without a rollout, the way the kubelet updates a ConfigMap.

components/matrix mounts ConfigMap quantroute-matrix as a directory. When the ConfigMap changes,
the kubelet's atomic writer puts the new files into a fresh timestamped directory and swaps the
``..data`` symlink to it in one rename; the file the gateway reads,
``capability_matrix.json -> ..data/capability_matrix.json``, then shows the new content. Here that
layout and swap are made on disk and the real gateway, serving over loopback, must pick the new
matrix up (and refuse a broken one, keeping the previous matrix).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quantroute.config import parse_config
from quantroute.core.matrix import SCHEMA_VERSION
from quantroute.server.app import MATRIX_POLL_S
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

FILE = "capability_matrix.json"
CODING = {
    "model": "auto",
    "messages": [{"role": "user", "content": "write a function"}],
    "max_tokens": 1,
}


def matrix(coding_a: float) -> dict[str, Any]:
    def tasks(coding: float) -> dict[str, Any]:
        return {
            t: {"quality": coding if t == "coding" else 0.9}
            for t in ("coding", "reasoning", "extraction", "chat")
        }

    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": "2026-11-25T00:00:00Z",
        "variants": {"a": {"tasks": tasks(coding_a)}, "b": {"tasks": tasks(0.9)}},
    }


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()
        (root / FILE).symlink_to(Path("..data") / FILE)

    def publish(self, content: str) -> None:
        self.generation += 1
        fresh = self.root / f"..2026_11_25_00_00_{self.generation:02d}.{os.getpid()}"
        fresh.mkdir()
        (fresh / FILE).write_text(content)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        staging = self.root / "..data_tmp"
        staging.symlink_to(fresh.name)
        staging.rename(self.root / "..data")  # the atomic swap
        if old is not None:
            for file in old.iterdir():
                file.unlink()
            old.rmdir()


@pytest.fixture
def backends() -> Iterator[dict[str, ThreadedServer]]:
    servers = {
        k: ThreadedServer(FakeBackend(FakeState(served_model_name=k)).app).start()
        for k in ("a", "b")
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_a_new_matrix_in_the_mounted_config_map_is_loaded_without_a_restart(
    tmp_path: Path, backends: dict[str, ThreadedServer]
) -> None:
    volume = ConfigMapVolume(tmp_path / "quantroute-matrix")
    volume.publish(json.dumps(matrix(0.4)))
    config = parse_config(
        {
            "backends": [
                {"id": k, "url": s.url, "served_model_name": k, "max_seq_len": 4096, "capacity": 8}
                for k, s in backends.items()
            ],
            "groups": [{"name": "auto", "variants": ["a", "b"], "quality_floor": 0.7}],
            "matrix_path": str(volume.root / FILE),
            "policy": {"scrape_interval_s": 0.1},
        }
    )

    with GatewayThread(config) as gateway:

        def rejected() -> set[str]:
            body = httpx.post(
                gateway.url + "/v1/route/explain",
                json=CODING,
                headers={"x-quantroute-task": "coding"},
            ).json()
            return {c["backend"] for c in body["candidates"] if not c["admitted"]}

        assert wait_until(lambda: rejected() == {"a"}, 5.0)  # coding 0.40 below the floor
        volume.publish("{broken")  # a bad ConfigMap edit: the previous matrix stays
        time.sleep(MATRIX_POLL_S * 1.5)
        assert rejected() == {"a"}
        volume.publish(json.dumps(matrix(0.95)))
        assert wait_until(lambda: rejected() == set(), MATRIX_POLL_S * 4)
        admin = httpx.get(gateway.url + "/admin/backends").json()
        assert admin["matrix"] == str(volume.root / FILE)
