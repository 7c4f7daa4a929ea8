"""`quantroute serve` as operators run it: tracing from the config and OTEL_* environment,
exported over OTLP/HTTP to a real receiver; the gateway without the `tracing` extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer
from quantroute.testing.otlp_receiver import OtlpReceiver, ReceivedSpan
from quantroute.testing.procs import bound_port

TRACE_ID = "5b8efff798038103d269b633813fc60c"
# Makes the OpenTelemetry SDK and exporter unimportable, as on an install without
# quantroute[tracing]. (The API package stays: recent FastAPI releases depend on it.)
EXTRA = ("opentelemetry.sdk", "opentelemetry.exporter")
NO_OTEL = f"""
import sys
class _NoSdk:
    def find_spec(self, name, path=None, target=None):
        if name.startswith({EXTRA!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, _NoSdk())
"""


@pytest.fixture
def backend() -> Iterator[ThreadedServer]:
    with ThreadedServer(FakeBackend(FakeState(served_model_name="m")).app) as server:
        yield server


def _config(tmp_path: Path, backend_url: str, **extra: object) -> Path:
    data = {
        "backends": [
            {"id": "a", "url": backend_url, "served_model_name": "m", "max_seq_len": 4096,
             "capacity": 8}
        ],
        "groups": [{"name": "auto", "variants": ["a"]}],
        "policy": {"scrape_interval_s": 0.2},
        **extra,
    }  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _serve(
    config: Path, env: dict[str, str], tmp_path: Path, *, block_otel: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """``quantroute serve`` on port 0; the port it bound is read back from its log."""
    code = (NO_OTEL if block_otel else "") + (
        "from quantroute.cli import main\n"
        f"sys.exit(main(['serve', '--config', {str(config)!r}, '--port', '0']))\n"
    )
    log_path = tmp_path / "serve.log"
    # the child writes to its own copy of the descriptor; the test's is closed at once
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys\n" + code], env=env, stdout=log, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{bound_port(log_path, proc)}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    proc.kill()
    proc.wait(10)
    raise AssertionError(log_path.read_text())


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM; uvicorn shuts down gracefully (the lifespan flushes traces and the access log),
    then re-raises the signal, so a clean stop exits 0 or -SIGTERM."""
    proc.terminate()
    code = proc.wait(20)
    return 0 if code == -signal.SIGTERM else code


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def test_serve_exports_the_request_trace_to_an_otlp_receiver(
    backend: ThreadedServer, tmp_path: Path
) -> None:
    with OtlpReceiver() as receiver:
        env = {
            **_clean_env(),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,  # this alone turns tracing on
            "OTEL_SERVICE_NAME": "gw-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        proc, url = _serve(_config(tmp_path, backend.url), env, tmp_path)
        try:
            with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
                client.chat.completions.create(
                    model="auto",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=3,
                    extra_headers={"traceparent": f"00-{TRACE_ID}-1111111111111111-01"},
                )

            def arrived(spans: list[ReceivedSpan]) -> bool:
                return any(s.trace_id == TRACE_ID and s.kind == "server" for s in spans)

            spans = [s for s in receiver.wait_for(arrived) if s.trace_id == TRACE_ID]
        finally:
            assert _stop(proc) == 0
    names = sorted(s.name for s in spans)
    assert names == [
        "POST /v1/chat/completions",
        "quantroute.decide",
        "quantroute.parse",
        "quantroute.upstream",
    ]
    assert {s.service for s in spans} == {"gw-under-test"}
    server = next(s for s in spans if s.kind == "server")
    assert server.attributes["quantroute.backend"] == "a"
    assert server.attributes["gen_ai.usage.output_tokens"] == 3


def test_serve_without_the_extra_runs_and_writes_its_access_log(
    backend: ThreadedServer, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.jsonl"
    config = _config(tmp_path, backend.url, access_log={"path": str(log_path)})
    proc, url = _serve(config, _clean_env(), tmp_path, block_otel=True)
    try:
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
    finally:
        assert _stop(proc) == 0
    [line] = log_path.read_text().splitlines()
    record = json.loads(line)
    assert (record["status"], record["backend"], record["trace_id"]) == (200, "a", None)


@pytest.mark.parametrize(
    ("extra", "env", "cause"),
    [
        ({"tracing": {"enabled": True}}, {}, "tracing.enabled in the config"),
        (
            {},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ],
)
def test_tracing_on_without_the_extra_is_a_config_error(
    tmp_path: Path, extra: dict[str, object], env: dict[str, str], cause: str
) -> None:
    config = _config(tmp_path, "http://127.0.0.1:9", **extra)
    for command in ("check-config", "serve"):
        argv = (
            [command, str(config)]
            if command == "check-config"
            else [command, "--config", str(config)]
        )
        code = NO_OTEL + f"from quantroute.cli import main\nsys.exit(main({argv!r}))\n"
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**_clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert cause in done.stderr and "pip install 'quantroute[tracing]'" in done.stderr


def test_with_tracing_off_the_gateway_never_imports_the_sdk() -> None:
    code = (
        "import sys\n"
        "from quantroute.config import parse_config\n"
        "from quantroute.server.app import create_app\n"
        "create_app(parse_config({'access_log': {'path': '-'}}))\n"
        f"print(sorted(m for m in sys.modules if m.startswith({EXTRA!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
