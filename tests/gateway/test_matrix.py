"""The capability matrix as the gateway loads it: validation, the quality floor, hot reload."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from quantroute.config import parse_config
from quantroute.core.matrix import SCHEMA_VERSION
from quantroute.errors import MatrixError
from quantroute.server.app import create_app
from quantroute.state.matrix_source import MatrixSource, load_matrix
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread


def matrix(coding_a: float, *, version: int = SCHEMA_VERSION) -> dict[str, Any]:
    def tasks(coding: float) -> dict[str, Any]:
        return {
            t: {"quality": coding if t == "coding" else 0.9}
            for t in ("coding", "reasoning", "extraction", "chat")
        }

    return {
        "schema_version": version,
        "generated_at": "2026-11-24T00:00:00Z",
        "variants": {"a": {"tasks": tasks(coding_a)}, "b": {"tasks": tasks(0.9)}},
    }


def write(path: Path, data: dict[str, Any], mtime: float) -> None:
    path.write_text(json.dumps(data))
    os.utime(path, (mtime, mtime))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps(matrix(0.5, version=0)), "schema_version is 0"),
        (
            json.dumps({**matrix(0.5), "variants": {"a": {"tasks": {"coding": {"quality": 7}}}}}),
            "variants.a.tasks.coding.quality",
        ),
    ],
)
def test_bad_matrix_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(MatrixError, match=message.replace(".", r"\.")):
        load_matrix(path)


def test_reload_follows_the_file_and_keeps_the_last_good_matrix(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write(path, matrix(0.4), 1_000_000)
    source = MatrixSource(path)
    assert source.current is not None and source.current.quality("a", "coding") == 0.4
    assert source.maybe_reload() is False  # same mtime: not read again
    write(path, {"bad": True}, 1_000_010)
    assert source.maybe_reload() is False  # broken: the previous matrix stays
    assert source.current.quality("a", "coding") == 0.4
    write(path, matrix(0.95), 1_000_020)
    assert source.maybe_reload() is True
    assert source.current.quality("a", "coding") == 0.95
    path.unlink()
    assert source.maybe_reload() is False and source.current.quality("a", "coding") == 0.95
    assert MatrixSource(None).maybe_reload() is False


def test_floor_from_matrix_and_hot_reload(tmp_path: Path) -> None:
    path = tmp_path / "capability_matrix.json"
    write(path, matrix(0.4), 1_000_000)
    servers = {
        k: ThreadedServer(FakeBackend(FakeState(served_model_name=k)).app).start()
        for k in ("a", "b")
    }
    rows = [
        {"id": k, "url": s.url, "served_model_name": k, "max_seq_len": 4096, "capacity": 8}
        for k, s in servers.items()
    ]
    config = parse_config(
        {
            "backends": rows,
            "groups": [{"name": "auto", "variants": ["a", "b"], "quality_floor": 0.7}],
            "matrix_path": str(path),
            "policy": {"scrape_interval_s": 0.1},
        }
    )
    coding = {
        "model": "auto",
        "messages": [{"role": "user", "content": "write code"}],
        "max_tokens": 1,
    }
    headers = {"x-quantroute-task": "coding"}

    def explain() -> dict[str, Any]:
        body: dict[str, Any] = httpx.post(
            gateway.url + "/v1/route/explain", json=coding, headers=headers
        ).json()
        return body

    def admitted() -> set[str]:
        return {c["backend"] for c in explain()["candidates"] if c["admitted"]}

    app = create_app(config, matrix_poll_s=0.05)
    try:
        with GatewayThread(config, app=app) as gateway:
            assert wait_until(lambda: explain()["chosen"] is not None)
            verdicts = {c["backend"]: c for c in explain()["candidates"]}
            assert verdicts["a"]["reasons"] == ["quality: coding quality 0.40 below floor 0.70"]
            assert verdicts["a"]["rejections"] == [
                {"filter": "quality", "detail": "coding quality 0.40 below floor 0.70"}
            ]
            assert admitted() == {"b"}
            write(path, matrix(0.95), 1_000_020)  # the running gateway picks the new file up
            assert wait_until(lambda: admitted() == {"a", "b"}, 5)
    finally:
        for server in servers.values():
            server.stop()
