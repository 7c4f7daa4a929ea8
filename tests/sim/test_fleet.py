"""Fleet configuration, the background-thread runner, and `simulate_main`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import httpx
import pydantic
import pytest

from quantroute.sim.fleet import (
    SimBackendSpec,
    SimFleet,
    SimFleetConfig,
    build_backend,
    default_answer_key,
    load_fleet_config,
    run_fleet_in_thread,
)


def test_default_fleet_is_the_four_variants_on_8101_to_8104() -> None:
    config = load_fleet_config()
    assert config.time_scale == 1.0
    assert [(b.id, b.profile, b.port) for b in config.backends] == [
        ("llama3-8b-awq", "llama3-8b-awq", 8101),
        ("qwen25-7b-gptq", "qwen25-7b-gptq", 8102),
        ("llama3-70b-awq", "llama3-70b-awq", 8103),
        ("llama3-8b-fp16", "llama3-8b-fp16", 8104),
    ]


def test_fleet_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "time_scale: 20\nseed: 4\nbackends:\n"
        "  - {id: a, profile: llama3-8b-awq, max_model_len: 4096, legacy_metric_names: true}\n"
    )
    config = load_fleet_config(path)
    assert (config.time_scale, config.seed) == (20, 4)
    assert config.backends[0] == SimBackendSpec(
        id="a", profile="llama3-8b-awq", max_model_len=4096, legacy_metric_names=True
    )


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ([{"id": "a", "profile": "llama3-8b-awq", "gpu": "h100"}], "gpu"),
        ([{"id": "a", "profile": "gpt-5"}], "gpt-5"),
        ([{"id": "a", "profile": "llama3-8b-awq"}] * 2, "unique"),
        ([{"id": "a", "profile": "llama3-8b-awq", "gpu_memory_utilization": 1.5}], "gpu_memory"),
        ([], "backends"),
    ],
)
def test_bad_fleet_config_names_the_field(backends: list[object], message: str) -> None:
    with pytest.raises((pydantic.ValidationError, KeyError), match=message):
        SimFleetConfig.model_validate({"backends": backends})


def test_answer_key_comes_from_workloads_when_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    workloads = types.ModuleType("quantroute.workloads")
    key = {"q": ("chat", "a")}
    setattr(workloads, "answer_key", lambda: key)  # noqa: B010 (a module built on the fly)
    monkeypatch.setitem(sys.modules, "quantroute.workloads", workloads)
    assert default_answer_key() == key
    monkeypatch.setitem(sys.modules, "quantroute.workloads", None)  # import fails
    assert default_answer_key() == {}


def test_fleet_in_a_thread_serves_and_stops() -> None:
    config = SimFleetConfig(
        time_scale=50,
        backends=[
            SimBackendSpec(id="a", profile="llama3-8b-awq"),
            SimBackendSpec(id="b", profile="llama3-70b-awq"),
        ],
    )
    before = threading.active_count()
    with run_fleet_in_thread(config, answer_key={}) as fleet:
        assert set(fleet.urls) == {"a", "b"}
        assert len({url.rsplit(":", 1)[1] for url in fleet.urls.values()}) == 2
        for url in fleet.urls.values():
            assert httpx.get(url + "/health").status_code == 200
        body = {"model": "llama3-70b-awq", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(fleet.urls["b"] + "/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200
        urls = dict(fleet.urls)
    assert threading.active_count() == before
    with pytest.raises(httpx.ConnectError):
        httpx.get(urls["a"] + "/health")


def _sigint_default() -> None:
    """In the child, before exec: SIGINT as a fresh process has it (default, unblocked),
    whatever disposition or mask the test process passed on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_simulate_main_runs_until_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("backends:\n  - {id: only, profile: qwen25-7b-gptq}\n")
    script = (
        "import sys; from quantroute.sim.command import simulate_main; "
        f"sys.exit(simulate_main({str(path)!r}, 10.0, 1))"
    )
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_sigint_default,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        url = next(w for line in lines for w in line.split() if w.startswith("http://127."))
        assert httpx.get(url + "/health").status_code == 200
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert "simulated fleet stopped" in out
    assert "time scale 10x" in "".join(lines)


def test_simulate_main_reports_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quantroute.sim.command import simulate_main

    path = tmp_path / "fleet.yaml"
    path.write_text("backends:\n  - {id: x, profile: llama3-8b-awq, max_num_seqs: 0}\n")
    assert simulate_main(str(path), None, None) == 2
    assert "max_num_seqs" in capsys.readouterr().out


async def test_a_taken_port_fails_the_start_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = SimFleetConfig(
            backends=[
                SimBackendSpec(id="free", profile="llama3-8b-awq"),
                SimBackendSpec(id="taken", profile="llama3-8b-awq", port=port),
            ]
        )
        fleet = SimFleet(config, answer_key={})
        with pytest.raises(OSError):
            async with fleet:
                pass
        assert fleet.urls.keys() == {"free"}
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as http:
                await http.get(fleet.urls["free"] + "/health")


async def test_simulated_time_runs_time_scale_times_faster() -> None:
    wall = [100.0]
    config = SimFleetConfig(
        time_scale=20, backends=[SimBackendSpec(id="a", profile="llama3-8b-awq")]
    )
    backend = build_backend(
        config.backends[0], time_scale=20, seed=0, answer_key={}, clock=lambda: wall[0]
    )
    async with backend.running():
        await asyncio.sleep(0)  # let the loop start
        wall[0] += 1.5
        assert backend.sim_now() == pytest.approx(30.0)
