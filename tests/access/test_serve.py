"""`quantroute serve` and access: no open gateway beyond loopback unless meant; /metrics on its
own port; the key tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from quantroute.access.exposure import check_exposure, is_loopback
from quantroute.access.keygen import new_key, sha256_hex
from quantroute.config import parse_config
from quantroute.errors import ConfigError
from quantroute.testing.procs import (
    Child,
    free_port,
    quantroute_command,
    running,
    start,
    start_on_free_ports,
)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("gateway.internal", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


KEYED = {"access": {"keys": [{"name": "k", "sha256": "a" * 64, "models": ["*"]}]}}


@pytest.mark.parametrize(
    ("data", "host", "refused"),
    [
        ({}, "127.0.0.1", False),
        ({}, "0.0.0.0", True),
        ({}, "10.1.2.3", True),
        ({"access": {"open": True}}, "0.0.0.0", False),
        (KEYED, "0.0.0.0", False),
        ({"access": {"keys_file": "/somewhere/keys.yaml"}}, "0.0.0.0", False),
    ],
)
def test_exposure(data: dict[str, object], host: str, refused: bool) -> None:
    config = parse_config(data)
    if refused:
        with pytest.raises(ConfigError, match=r"access\.open: true"):
            check_exposure(config, host)
    else:
        check_exposure(config, host)


def test_serve_refuses_an_open_gateway_on_all_interfaces(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listen: {host: 0.0.0.0, port: 8080}\n")
    result = subprocess.run(
        [*quantroute_command(), "serve", "--config", str(config), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr


def test_metrics_on_their_own_port_and_keys_from_the_environment(tmp_path: Path) -> None:
    key = new_key()
    env = {**os.environ, "QR_OPS_KEY": key}
    ports: dict[str, int] = {}

    def launch() -> Child:
        ports.update(api=free_port(), metrics=free_port())
        config = {
            "listen": {"host": "127.0.0.1", "port": ports["api"]},
            "access": {
                "keys": [{"name": "ops", "key_env": "QR_OPS_KEY", "models": ["*"], "admin": True}],
                "metrics_port": ports["metrics"],
            },
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd = [*quantroute_command(), "serve", "--config", str(path)]
        return start("gateway", cmd, tmp_path, env=env)

    def up(_: Child) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{ports['api']}/health").status_code == 200
        except httpx.HTTPError:
            return False

    with running(start_on_free_ports(launch, up)) as child:
        base, metrics = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['metrics']}"
        scraped = httpx.get(metrics + "/metrics")
        assert scraped.status_code == 200 and "quantroute_auth_failures_total" in scraped.text
        # the API port has no /metrics any more, for anyone
        assert httpx.get(base + "/metrics").status_code == 404
        admin = {"Authorization": f"Bearer {key}"}
        assert httpx.get(base + "/metrics", headers=admin).status_code == 404
        assert httpx.get(base + "/admin/access", headers=admin).json()["keys_enabled"] is True
    log = child.tail(200)
    assert "API keys required" in log and key not in log
    assert child.popen.returncode in (0, -15)


def test_gen_key_appends_to_a_valid_keys_file(tmp_path: Path) -> None:
    from quantroute.access.keys import read_keys_file

    keys_file = tmp_path / "keys.yaml"
    for args in (["--name", "ops", "--admin"], ["--name", "team-a"]):
        out = subprocess.run(
            [*quantroute_command(), "gen-key", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        with keys_file.open("a") as fh:
            fh.write(out.stdout)
    ops, team = read_keys_file(keys_file)
    assert (ops.name, ops.admin, ops.models) == ("ops", True, ("*",))
    assert (team.name, team.admin, team.models) == ("team-a", False, ("auto",))


def test_gen_key_and_hash_key_agree() -> None:
    out = subprocess.run(
        [*quantroute_command(), "gen-key", "--name", "team-a"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = out.stderr.rsplit(" ", 1)[1].strip()
    entry = yaml.safe_load(out.stdout)[0]
    assert entry["name"] == "team-a" and entry["sha256"] == sha256_hex(key)
    hashed = subprocess.run(
        [*quantroute_command(), "hash-key"],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert hashed.stdout.strip() == sha256_hex(key)
    assert len(key) >= 40 and key.startswith("qr-")


def test_port_zero_on_the_command_line_means_any_free_port(tmp_path: Path) -> None:
    """``--port 0`` is not "unset": it overrides the config's port (which here is taken)."""
    import socket
    import sys

    from quantroute.testing.procs import bound_port

    with socket.create_server(("127.0.0.1", 0)) as taken:
        config_port = taken.getsockname()[1]
        path = tmp_path / "gateway.yaml"
        data = {
            "listen": {"host": "127.0.0.1", "port": config_port},
            "backends": [
                {
                    "id": "a",
                    "url": "http://127.0.0.1:9",
                    "served_model_name": "m",
                    "max_seq_len": 4096,
                    "capacity": 8,
                }
            ],
            "groups": [{"name": "auto", "variants": ["a"]}],
        }
        path.write_text(yaml.safe_dump(data))
        log = tmp_path / "serve.log"
        cmd = [sys.executable, "-m", "quantroute.cli", "serve", "--config", str(path)]
        with log.open("wb") as out:
            proc = subprocess.Popen([*cmd, "--port", "0"], stdout=out, stderr=subprocess.STDOUT)
        try:
            port = bound_port(log, proc)
            assert port != config_port
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        finally:
            proc.kill()
            proc.wait(10)
