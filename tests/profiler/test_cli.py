"""The commands: profile -> write -> serve -> route end to end, matrix show and plot, Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from quantroute.cli import main
from quantroute.config import TASK_TYPES, TaskType, load_config
from quantroute.core.matrix import CapabilityMatrix, SuiteInfo
from quantroute.profiler.build import build_matrix
from quantroute.profiler.command import register, settings_of, suites_of
from quantroute.profiler.prefill import PrefillPoint
from quantroute.profiler.runner import LevelResult, Target, TaskTally, VariantRecord
from quantroute.profiler.session import select_samples, write_matrix
from quantroute.profiler.settings import ProfileSettings
from quantroute.state.matrix_source import load_matrix
from quantroute.testing.gateway_thread import GatewayThread
from quantroute.workloads import builtin_suites

from .support import Fleet, backend_row, running_fleet, url_of

SCALE = 50.0
SAMPLES = 8
GROUP = "fleet"


def _excluded_case(fleet: Fleet) -> tuple[TaskType, str, float]:
    """A task type, the one variant the simulator makes worst at it, and a floor between it and
    the next worst, from the simulator's own answers to the samples the profiler will send."""
    samples, _ = select_samples(builtin_suites(), ProfileSettings(samples_per_task=SAMPLES))
    passes = {v: fleet.expected_passes(v, samples) for v in fleet.sim.urls}
    for task in TASK_TYPES:
        ranked = sorted(passes, key=lambda v: passes[v][task])
        low, second = passes[ranked[0]][task], passes[ranked[1]][task]
        if low < second:
            return task, ranked[0], (low + second) / 2 / SAMPLES
    raise AssertionError(f"no task with a single worst variant: {passes}")


async def _profile_cli(config: Path, floor: float) -> int:
    args = ["profile", "--config", str(config), "--samples-per-task", str(SAMPLES)]
    args += ["--concurrency", "1,2", "--rounds", "1", "--time-scale", str(SCALE)]
    args += ["--quality-floor", f"{floor:.4f}", "--quiet"]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "quantroute.cli", *args)
    try:
        return await asyncio.wait_for(proc.wait(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _route(client: openai.AsyncOpenAI, task: TaskType, n: int) -> Counter[str]:
    chosen: Counter[str] = Counter()
    for _ in range(n):
        raw = await client.chat.completions.with_raw_response.create(
            model=GROUP,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            extra_headers={"x-quantroute-task": task},
        )
        chosen[raw.headers["x-quantroute-backend"]] += 1
    return chosen


async def _explain(url: str, task: TaskType) -> dict[str, dict[str, Any]]:
    body = {"model": GROUP, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            url + "/v1/route/explain", json=body, headers={"x-quantroute-task": task}
        )
    return {c["backend"]: c for c in response.json()["candidates"]}


async def _all_fresh(url: str, count: int) -> bool:
    async with httpx.AsyncClient(trust_env=False) as client:

        async def fresh() -> int:
            return len((await client.get(url + "/ready")).json()["fresh_backends"])

        for _ in range(100):
            if await fresh() == count:
                return True
            await asyncio.sleep(0.1)
    return False


async def test_profile_write_serve_route(tmp_path: Path) -> None:
    async with running_fleet(SCALE) as fleet:
        task, excluded, floor = _excluded_case(fleet)
        config_path = tmp_path / "gateway.yaml"
        config_doc = {
            "matrix_path": "capability_matrix.json",
            "backends": fleet.rows(),
            "groups": [{"name": GROUP, "variants": list(fleet.sim.urls)}],
            "policy": {"picker": "round_robin"},  # spread requests over every admitted backend
        }
        config_path.write_text(yaml.safe_dump(config_doc), encoding="utf-8")
        assert await _profile_cli(config_path, floor) == 0

        matrix = load_matrix(tmp_path / "capability_matrix.json")
        assert matrix.stable(excluded, task) is False
        assert all(matrix.stable(v, task) for v in fleet.sim.urls if v != excluded)
        other = next(t for t in TASK_TYPES if matrix.stable(excluded, t))

        gateway = GatewayThread(load_config(config_path))
        await asyncio.to_thread(gateway.start)
        try:
            assert await _all_fresh(gateway.url, len(fleet.sim.urls))
            client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
            routed = await _route(client, task, 12)
            elsewhere = await _route(client, other, 12)
            explained = await _explain(gateway.url, task)
            await client.close()
        finally:
            await asyncio.to_thread(gateway.stop)
    assert excluded not in routed and sum(routed.values()) == 12
    assert len(routed) == len(fleet.sim.urls) - 1  # every other variant took some
    assert elsewhere[excluded] > 0  # the same backend is fine for a task it is stable on
    assert explained[excluded]["admitted"] is False
    assert any(f"unstable for {task}" in r for r in explained[excluded]["reasons"])


def test_profile_arguments_become_settings_and_suites(tmp_path: Path) -> None:
    suite = tmp_path / "mine.jsonl"
    line = {
        "id": "q1",
        "task": "chat",
        "messages": [{"role": "user", "content": "Say hi in lowercase."}],
        "check": {"type": "format", "rules": [{"rule": "lowercase"}]},
    }
    suite.write_text(json.dumps(line) + "\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    argv = ["profile", "--config", "gw.yaml", "--suite", str(suite), "--no-builtin"]
    argv += ["--task", "chat", "--concurrency", "2,16", "--time-scale", "0.5"]
    argv += ["--prefill-tokens", "256,8000", "--prefill-repeats", "5"]
    args = parser.parse_args([*argv, "--ttft-slo-ms", "800"])
    settings = settings_of(args)
    assert settings.tasks == ("chat",) and settings.concurrency_levels == (2, 16)
    assert settings.prefill_prompt_tokens == (256, 8000) and settings.prefill_repeats == 5
    assert settings.time_scale == 0.5 and settings.ttft_slo_ms == 800
    assert [s.name for s in suites_of(args)] == ["mine"]
    with pytest.raises(SystemExit):
        parser.parse_args(["profile", "--config", "gw.yaml", "--concurrency", "0,x"])


def _sample_matrix(partial: bool = False) -> CapabilityMatrix:
    fast = VariantRecord(Target("fast-8b", "http://a", "fast-8b", "l40s", 1.8))
    fast.tasks = {"chat": TaskTally(samples=40, passed=30), "coding": TaskTally(40, 12)}
    fast.ttfts_s = [0.02 + i / 1e4 for i in range(150)]
    fast.itls_s = [0.01] * 40
    fast.successes = 80
    fast.levels = [
        LevelResult(1, 4, 0, 0, 400, 1.0, (0.02,)),
        LevelResult(8, 8, 0, 0, 2000, 1.0, ()),
    ]
    fast.prefill = [PrefillPoint(1000, 0.1, 3), PrefillPoint(4000, 0.35, 3)]  # 12,000 tokens/s
    big = VariantRecord(Target("big-70b", "http://b", "big-70b", "h100", 4.5))
    big.tasks = {"chat": TaskTally(samples=40, passed=38), "coding": TaskTally(40, 36)}
    big.ttfts_s, big.itls_s, big.successes = [0.05] * 30, [0.02] * 30, 80
    big.levels = [LevelResult(1, 4, 0, 0, 200, 1.0, (0.05,))]
    dead = VariantRecord(Target("dead", "http://c", "dead", "h100", 4.5))
    dead.error = "the first 8 requests all failed: connection failed: ConnectError"
    suites = (
        SuiteInfo(name="s", task="chat", size=40),
        SuiteInfo(name="s", task="coding", size=40),
    )
    records = {"fast-8b": fast, "big-70b": big, "dead": dead}
    settings = ProfileSettings(tasks=("coding", "chat"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return build_matrix(records, suites, settings, generated_at=now, partial=partial)


def test_matrix_show_prints_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_matrix(_sample_matrix(partial=True), tmp_path / "m.json")
    assert main(["matrix", "show", str(path)]) == 0
    out = capsys.readouterr().out
    texts = ("fast-8b", "big-70b", "dead", "PARTIAL", "n too small", "failed", "$1.80", "12,000")
    for text in texts:
        assert text in out
    assert "below the floor" in out  # fast-8b coding: 12/40 = 0.30 < 0.5
    assert "connection failed" in out


def test_matrix_plot_writes_a_png(tmp_path: Path) -> None:
    path = write_matrix(_sample_matrix(), tmp_path / "m.json")
    out = tmp_path / "m.png"
    assert main(["matrix", "plot", str(path), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"schema_version": 0, "generated_at": "x"}, "schema_version is 0"),
        ({"schema_version": 1, "generated_at": "x", "variants": {"v": {"tasks": 3}}}, "variants.v"),
    ],
)
def test_matrix_show_rejects_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    assert main(["matrix", "show", str(path)]) == 2
    assert message in capsys.readouterr().err


def _sigint_default() -> None:
    """In the child, before exec: SIGINT as a fresh process has it (default, unblocked),
    whatever disposition or mask the test process passed on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_writes_a_partial_matrix(tmp_path: Path, hanging_socket: socket.socket) -> None:
    config = tmp_path / "gw.yaml"
    row = backend_row("llama3-8b-awq", url_of(hanging_socket))
    config.write_text(yaml.safe_dump({"backends": [row]}), encoding="utf-8")
    out = tmp_path / "partial.json"
    cmd = [sys.executable, "-m", "quantroute.cli", "profile", "--config", str(config)]
    cmd += ["-o", str(out), "--quiet", "--timeout-s", "600"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    conn: socket.socket | None = None
    try:
        hanging_socket.settimeout(60)
        conn, _ = hanging_socket.accept()  # the profiler's first request is in flight
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        if conn is not None:
            conn.close()
    assert proc.returncode == 130, err

    assert "PARTIAL" in err
    matrix = load_matrix(out)
    assert matrix.partial and set(matrix.variants) == {"llama3-8b-awq"}
