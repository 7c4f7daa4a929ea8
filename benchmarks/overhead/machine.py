"""What the figures were measured on: machine, software versions, code revision, load."""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from typing import Any

import procs

PACKAGES = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "aiohttp", "py-spy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as fh:
        return int(fh.readline().split()[1]) // 1024


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    repo = procs.HERE.parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip()


def info(load_before: str, load_after: str, source: str | None = None) -> dict[str, Any]:
    spec = importlib.util.find_spec("quantroute")
    origin = f"{source}/quantroute/__init__.py" if source else (spec.origin if spec else "?")
    dirty = _git("status", "--porcelain", "--", "src")
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": _mem_total_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "quantroute_from": origin,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "src_changes": "uncommitted changes in src/" if dirty else "clean",
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
