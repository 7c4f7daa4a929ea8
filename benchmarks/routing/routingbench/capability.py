"""The capability matrix quantroute's policy routes with: made by ``quantroute profile``.

The profiler runs against a fresh simulated fleet (the packaged default fleet, graded with the
workloads' answer key) through the same gateway backend rows the benchmark uses. The result is
cached as ``capability_matrix.json`` beside ``capability_matrix.provenance.json`` (the exact
command, time scale, fleet seed, wall time, profiler commit); ``--reprofile`` makes it again.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from routingbench import policies, procs

from quantroute.core.matrix import CapabilityMatrix

MATRIX_FILE = "capability_matrix.json"
PROVENANCE_FILE = "capability_matrix.provenance.json"
PROFILE_TIME_SCALE = 0.25
PROFILE_ARGS = ("--concurrency", "1,8,32,64", "--rounds", "2", "--max-parallel", "1", "--quiet")


def load_matrix(path: Path) -> CapabilityMatrix:
    return CapabilityMatrix.model_validate_json(path.read_text(encoding="utf-8"))


def _git_head() -> str | None:
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %s", "--", "src/quantroute/profiler"],
            capture_output=True,
            text=True,
            check=True,
            cwd=procs.PACKAGE_DIR.parent.parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def profile(out_dir: Path, work_dir: Path, seed: int = 0) -> Path:
    """Run ``quantroute profile`` against a fresh simulated fleet; returns the matrix path."""
    matrix_path = out_dir / MATRIX_FILE
    stats = work_dir / "profile.fleet.json"
    fleet = procs.start(
        "profile-fleet",
        procs.fleet_command(PROFILE_TIME_SCALE, seed, None, stats),
        work_dir,
        stdout_pipe=True,
    )
    with procs.running(fleet):
        urls = procs.read_json_line(fleet, 60)["urls"]
        config = {"backends": [{**row, "url": urls[row["id"]]} for row in policies.demo_backends()]}
        config_path = work_dir / "profile.gateway.yaml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        cmd = [*procs.quantroute_command(), "profile", "--config", str(config_path)]
        cmd += ["-o", str(matrix_path), "--time-scale", str(PROFILE_TIME_SCALE), *PROFILE_ARGS]
        started = time.monotonic()
        with (work_dir / "profile.log").open("wb") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=1800)
        wall = time.monotonic() - started
    lag = json.loads(stats.read_text()) if stats.exists() else {}
    provenance: dict[str, Any] = {
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["quantroute", *cmd[len(procs.quantroute_command()) :]]),
        "fleet": "packaged default fleet (quantroute.sim default_fleet.yaml), free ports",
        "fleet_seed": seed,
        "time_scale": PROFILE_TIME_SCALE,
        "wall_s": round(wall, 1),
        "profiler_commit": _git_head(),
        "fleet_lag": lag,
    }
    (out_dir / PROVENANCE_FILE).write_text(
        json.dumps(provenance, indent=1) + "\n", encoding="utf-8"
    )
    load_matrix(matrix_path)  # fail here, not in the gateway, if it is not a valid matrix
    return matrix_path


def ensure(out_dir: Path, work_dir: Path, *, reprofile: bool) -> Path:
    """The cached matrix, or a freshly profiled one when missing or asked for."""
    path = out_dir / MATRIX_FILE
    if path.exists() and not reprofile:
        load_matrix(path)
        return path
    return profile(out_dir, work_dir)
