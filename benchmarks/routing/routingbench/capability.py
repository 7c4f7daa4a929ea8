"""The capability matrix quantroute's policy routes with: made by ``quantroute profile``.

The profiler runs against a fresh simulated fleet (the packaged default fleet) through the same
gateway backend rows the benchmark uses, on an enlarged graded suite: every packaged sample
``COPIES`` times, each copy's prompt tagged so the simulator draws its answer independently (same
check, same reference answer, the workloads' near miss as the wrong answer). 32 samples per task
give a quality estimate of +-0.07 (one standard error), too coarse to tell a variant at 0.79
from one at 0.82 against a floor of 0.80; 256 give about +-0.025. The result is cached as
``capability_matrix.json`` beside ``capability_matrix.provenance.json`` (the exact command, time
scale, fleet seed, wall time, profiler commit); ``--reprofile`` makes it again.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from quantroute.core.matrix import CapabilityMatrix
from quantroute.workloads import Sample, builtin_suites, near_miss
from routingbench import policies, procs

MATRIX_FILE = "capability_matrix.json"
PROVENANCE_FILE = "capability_matrix.provenance.json"
PROFILE_TIME_SCALE = 0.5
PROFILE_ARGS = (
    "--concurrency", "1,8,32,64", "--rounds", "2", "--latency-concurrency", "16",
    "--max-parallel", "2", "--quiet",
)  # fmt: skip
COPIES = 8


def enlarged_suite(copies: int = COPIES) -> list[Sample]:
    """Every packaged sample ``copies`` times, each copy's last user message tagged."""
    out: list[Sample] = []
    for suite in builtin_suites():
        for sample in suite.samples:
            for n in range(copies):
                messages = list(sample.messages)
                last = max(i for i, m in enumerate(messages) if m.role == "user")
                tagged = f"(Ticket {n + 1}.) {messages[last].content}"
                messages[last] = messages[last].model_copy(update={"content": tagged})
                out.append(
                    sample.model_copy(
                        update={"id": f"{sample.id}-{n + 1}", "messages": tuple(messages)}
                    )
                )
    return out


def write_suite(samples: list[Sample], suite_path: Path, key_path: Path) -> None:
    lines = [s.model_dump_json(exclude_none=True) for s in samples]
    suite_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    key = {s.last_user_text: [s.task, s.answer or "", near_miss(s)] for s in samples}
    key_path.write_text(json.dumps(key), encoding="utf-8")


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
    suite_path, key_path = work_dir / "profile_suite.jsonl", work_dir / "profile_answer_key.json"
    write_suite(enlarged_suite(), suite_path, key_path)
    fleet = procs.start(
        "profile-fleet",
        procs.fleet_command(PROFILE_TIME_SCALE, seed, key_path, stats),
        work_dir,
        stdout_pipe=True,
    )
    with procs.running(fleet):
        urls = procs.read_json_line(fleet, 60)["urls"]
        config = {"backends": [{**row, "url": urls[row["id"]]} for row in policies.demo_backends()]}
        config_path = work_dir / "profile.gateway.yaml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        cmd = [*procs.quantroute_command(), "profile", "--config", str(config_path)]
        cmd += ["--no-builtin", "--suite", str(suite_path)]
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
        "suite": f"every packaged workload sample x{COPIES}, prompts tagged (see capability.py)",
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
    """The cached matrix, or a freshly profiled one when missing, asked for, or made before the
    profiler measured prefill rates (the gateway's latency estimate needs them)."""
    path = out_dir / MATRIX_FILE
    if reprofile or not path.exists() or _without_prefill_rate(load_matrix(path)):
        profile(out_dir, work_dir)
    missing = _without_prefill_rate(load_matrix(path))
    if missing:
        raise RuntimeError(f"the profiler measured no prefill rate for {missing}; see {path}")
    return path


def _without_prefill_rate(matrix: CapabilityMatrix) -> list[str]:
    return sorted(n for n, v in matrix.variants.items() if v.prefill_tokens_per_s is None)
