"""The Dockerfile, checked without a Docker engine: lint, structure, build context, and its
entrypoint and healthcheck commands run for real against the installed package. The image
itself, built and run, is tests/image/ (marker `image`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib import import_module
from pathlib import Path

import dockerfile
import httpx
import pytest
import yaml

from quantroute.config import load_config
from quantroute.testing.fake_backend import (
    FakeBackend,
    FakeState,
    ThreadedServer,
    wait_until,
)
from quantroute.testing.procs import free_port

from .helpers import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@cache
def commands() -> tuple[dockerfile.Command, ...]:
    parsed: tuple[dockerfile.Command, ...] = dockerfile.parse_file(str(DOCKERFILE))
    return parsed


def stages() -> dict[str, list[dockerfile.Command]]:
    """Each stage's instructions, FROM first, by stage name (unnamed stages by index)."""
    found: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] = []
    for cmd in commands():
        if cmd.cmd == "FROM":
            current = [cmd]
            value = cmd.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else str(len(found))
            found[name] = current
        elif found:
            current.append(cmd)
    return found


def chain(stage: str) -> list[dockerfile.Command]:
    """A stage's instructions after those of the stages it is built FROM: what its image holds."""
    own = stages()[stage]
    parent = own[0].value[0]
    return [*chain(parent), *own] if parent in stages() else own


def last_stage() -> str:
    return list(stages())[-1]


def final_stage() -> list[dockerfile.Command]:
    """The default target (the last stage), with the stages it derives from."""
    return chain(last_stage())


def instruction(name: str, stage: str | None = None) -> dockerfile.Command:
    (found,) = [c for c in chain(stage or last_stage()) if c.cmd == name]
    return found


def env() -> dict[str, str]:
    values: dict[str, str] = {}
    for cmd in final_stage():
        if cmd.cmd == "ENV":
            values.update(zip(cmd.value[::2], cmd.value[1::2], strict=True))
    return values


def build_args() -> dict[str, str]:
    return dict(
        c.value[0].split("=", 1) for c in commands() if c.cmd == "ARG" and "=" in c.value[0]
    )


# -- .dockerignore, with Docker's rules: last matching pattern wins, "!" re-includes, a pattern
#    that matches a directory matches everything under it, "**" spans directories.
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _patterns() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    return rules


def in_build_context(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in _patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            included = negate
    return included


def build_context() -> set[str]:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {p for p in tracked if in_build_context(p)}


# -- static checks ---------------------------------------------------------------------------
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_python_non_root() -> None:
    assert last_stage() == "gateway", "the gateway is the default target"
    image = final_stage()[0].value[0]
    for name, value in build_args().items():
        image = image.replace("${" + name + "}", value)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    user = instruction("USER").value[0].split(":")[0]
    assert user not in ("root", "0")
    assert instruction("EXPOSE").value == ("8080",)
    copies = [c.flags for c in final_stage() if c.cmd == "COPY" and c.flags]
    assert copies == [("--from=deps",), ("--from=build",)], "the built virtualenv only"
    assert not [c for c in final_stage() if c.cmd == "RUN" and "pip" in c.value[0]]


def test_profiler_target_is_the_runtime_with_the_profiler_virtualenv() -> None:
    copies = [c.flags for c in chain("profiler") if c.cmd == "COPY" and c.flags]
    assert copies == [("--from=deps-profiler",), ("--from=build-profiler",)]
    assert instruction("USER", "profiler").value == instruction("USER").value
    assert instruction("ENTRYPOINT", "profiler").value == ("quantroute",)
    package_steps = {
        stage: [c.value[0] for c in chain(stage) if c.cmd == "RUN" and "venv.sh" in c.value[0]]
        for stage in ("build", "build-profiler")
    }
    deps = 'sh venv.sh deps "$EXTRAS"'
    assert package_steps == {
        "build": [deps, "sh venv.sh package"],
        "build-profiler": [deps, 'sh venv.sh deps "profiler $EXTRAS"', "sh venv.sh package"],
    }


def _entrypoint_script() -> tuple[list[str], str]:
    entry = instruction("ENTRYPOINT")
    assert entry.json, "exec form, so signals reach the process"
    shell, flag, script, *rest = entry.value
    assert (shell, flag) == ("/bin/sh", "-c")
    return [shell, flag, script, *rest], script


def test_entrypoint_runs_quantroute_serve_with_the_config_from_the_environment() -> None:
    _, script = _entrypoint_script()
    words = script.split()
    assert words[:3] == ["exec", "quantroute", "serve"]
    assert '--config "$QUANTROUTE_CONFIG"' in script
    assert "--port 8080" in script and "--host 0.0.0.0" in script
    assert script.endswith('"$@"')


def test_console_script_and_serve_flags_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["quantroute"].split(":")
    assert callable(getattr(import_module(module), function))
    result = subprocess.run(
        [sys.executable, "-m", module, "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in ("--config", "--host", "--port"):
        assert flag in result.stdout


def test_config_path_is_a_file_the_image_copies() -> None:
    path = env()["QUANTROUTE_CONFIG"]
    copies = [c.value for c in final_stage() if c.cmd == "COPY" and not c.flags]
    sources = [src for *srcs, dest in copies for src in srcs if dest == path]
    assert len(sources) == 1, f"no COPY to {path}"
    source = sources[0]
    assert (ROOT / source).is_file()
    assert source in build_context()
    assert load_config(ROOT / source).listen.port == 8080


def test_build_context_holds_what_pip_install_needs_and_nothing_else() -> None:
    context = build_context()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"]} <= context
    package = {p for p in context if p.startswith("src/quantroute/")}
    assert {
        "src/quantroute/cli.py",
        "src/quantroute/serve.py",
        "src/quantroute/py.typed",
    } <= package
    source_files = {
        str(p.relative_to(ROOT)) for p in (ROOT / "src" / "quantroute").rglob("*.py")
    } - {p for p in context if "__pycache__" in p}
    assert source_files <= context
    for left_out in ("tests/deploy/test_dockerfile.py", "deploy/overlays/default/gateway.yaml"):
        assert left_out not in context
    assert not [p for p in context if p.startswith((".git/", "tests/")) or "__pycache__" in p]
    for cmd in commands():
        if cmd.cmd == "COPY" and not cmd.flags:
            for src in cmd.value[:-1]:
                assert any(p == src or p.startswith(src.rstrip("/") + "/") for p in context), src


# -- the entrypoint and healthcheck, run ------------------------------------------------------
@pytest.fixture
def backend() -> Iterator[ThreadedServer]:
    state = FakeState(served_model_name="hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4")
    with ThreadedServer(FakeBackend(state).app) as server:
        yield server


def _healthcheck(port: int) -> int:
    health = instruction("HEALTHCHECK")
    argv = list(health.value)
    assert argv[:2] == ["CMD", "python"], argv
    code = argv[-1]
    assert "http://127.0.0.1:8080/health" in code
    code = code.replace(":8080/", f":{port}/")
    return subprocess.run([sys.executable, *argv[2:-1], code], timeout=30, check=False).returncode


def test_entrypoint_and_healthcheck_run_the_gateway(
    backend: ThreadedServer, tmp_path: Path
) -> None:
    if shutil.which("quantroute") is None:
        pytest.fail("the quantroute console script is not on PATH: pip install -e '.[dev]'")
    image_config = yaml.safe_load((ROOT / "deploy" / "docker" / "gateway.yaml").read_text())
    image_config["backends"][0]["url"] = backend.url
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(image_config))
    argv, _ = _entrypoint_script()
    port = free_port()
    # Extra `docker run` arguments come last and win: loopback and a free port for the test.
    proc = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "QUANTROUTE_CONFIG": str(config), "QUANTROUTE_API_KEY": "k" * 32},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        up = wait_until(lambda: _health(port) or proc.poll() is not None, timeout_s=60)
        assert up and proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert _healthcheck(port) == 0
        # `exec` replaced the shell: the process Docker signals is quantroute itself.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"/bin/sh" not in cmdline[0] and any(b"quantroute" in part for part in cmdline)
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.stderr.read().decode() if proc.stderr else ""
        assert "Finished server process" in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
    assert _healthcheck(port) != 0


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.1)
        return False
