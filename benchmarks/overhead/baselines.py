"""Ceiling baselines beside the gateway, on the same core and the same backends:

- ``bare``: a minimal FastAPI + uvicorn + aiohttp pass-through (:mod:`bare_proxy`), always run;
  the gateway's figures are read as ratios against it (what routing costs over the frameworks);
- ``nginx``: a plain reverse proxy (one process, keep-alive upstream, no buffering), run when
  the ``nginx`` binary is installed (Debian's ``nginx-light``), skipped otherwise;
- ``vllm-router``: the Rust LLM router of issue #17's table (``vllm-router`` 0.1.17 from PyPI,
  round robin), run when its launcher is found (``$QR_VLLM_ROUTER`` or ``vllm-router`` on the
  PATH), skipped otherwise. It pins its dependencies (FastAPI, uvicorn, aiohttp) apart from the
  project's, so it goes in its own virtual environment:
  ``python3 -m venv /opt/vllm-router && /opt/vllm-router/bin/pip install vllm-router==0.1.17``
  and ``QR_VLLM_ROUTER=/opt/vllm-router/bin/vllm-router``.

All round-robin over the two backends, forward the body unchanged and relay the answer as it
comes (the client sends the backends' served model name to them, as to ``direct``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import procs
from loadgen import Target

START_TIMEOUT_S = 30.0
"""How long a baseline may take to answer ``/ready`` (``instructions.py`` raises it: under
valgrind a proxy takes about 20 s to start)."""

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/nginx-body;
  proxy_temp_path {dir}/nginx-proxy;
  fastcgi_temp_path {dir}/nginx-fastcgi;
  uwsgi_temp_path {dir}/nginx-uwsgi;
  scgi_temp_path {dir}/nginx-scgi;
  keepalive_requests 1000000;
  upstream backends {{
{servers}
    keepalive 512;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /ready {{ return 200 "ok"; }}
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"""


def start_bare(
    stack: contextlib.ExitStack, workdir: Path, cpu: int, backend_ports: list[int], model: str,
    env: dict[str, str],
) -> tuple[procs.Proc, Target, list[str]]:  # fmt: skip
    port = procs.free_port()
    cmd = [sys.executable, str(procs.HERE / "bare_proxy.py"), "--port", str(port), "--backends"]
    cmd += [f"http://127.0.0.1:{p}" for p in backend_ports]
    proc = procs.start("bare", cmd, cpu, workdir, env)
    stack.callback(procs.stop, proc)
    procs.wait_http(proc, f"http://127.0.0.1:{port}/ready", START_TIMEOUT_S)
    return proc, Target("bare", f"http://127.0.0.1:{port}", model), cmd


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


def start_nginx(
    stack: contextlib.ExitStack, workdir: Path, cpu: int, backend_ports: list[int], model: str
) -> tuple[procs.Proc, Target, list[str]] | None:
    binary = nginx_binary()
    if binary is None:
        return None
    port = procs.free_port()
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in backend_ports)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, servers=servers, port=port))
    cmd = [binary, "-c", str(conf), "-e", str(workdir / "nginx-error.log")]
    proc = procs.start("nginx", cmd, cpu, workdir)
    stack.callback(procs.stop, proc)
    procs.wait_http(proc, f"http://127.0.0.1:{port}/ready", START_TIMEOUT_S)
    return proc, Target("nginx", f"http://127.0.0.1:{port}", model), cmd


def vllm_router_binary() -> str | None:
    named = os.environ.get("QR_VLLM_ROUTER")
    if named:
        return named if Path(named).exists() else None
    return shutil.which("vllm-router")


def start_vllm_router(
    stack: contextlib.ExitStack, workdir: Path, cpu: int, backend_ports: list[int], model: str
) -> tuple[procs.Proc, Target, list[str]] | None:
    """The Rust router, round robin over the backends, its own metrics on a free loopback port
    (its default is a fixed one, 29000). Ready when ``/health`` answers 200: it checks every
    worker's ``/health`` before it serves."""
    binary = vllm_router_binary()
    if binary is None:
        return None
    port = procs.free_port()
    cmd = [binary, "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"]
    cmd += ["--worker-urls", *(f"http://127.0.0.1:{p}" for p in backend_ports)]
    cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(procs.free_port())]
    cmd += ["--log-level", "warning"]
    proc = procs.start("vllm-router", cmd, cpu, workdir)
    stack.callback(procs.stop, proc)
    procs.wait_http(proc, f"http://127.0.0.1:{port}/health", START_TIMEOUT_S)
    return proc, Target("vllm-router", f"http://127.0.0.1:{port}", model), cmd
