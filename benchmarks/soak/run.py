"""Soak: 1,000 concurrent streams through the gateway, clean, beside hostile clients, and with faults.

    python benchmarks/soak/run.py                    # 3 phases x 60 s, 1,000 streams
    python benchmarks/soak/run.py --streams 200 --duration 30 --phases clean faults

Processes (all on 127.0.0.1, each in its own process group, all stopped on the way out): three
simulated vLLM backends (``backend.py``, one process each so one can be killed), the gateway as
users run it (``quantroute serve``), the load generator (``loadgen.py``) and, in the hostile
phase, ``hostile.py``. Phases:

- ``clean``: the streams alone.
- ``hostile``: the same streams beside 50 slow-header connections and 10 never-ending uploads;
  its p99 is compared with the clean phase of the same run.
- ``faults``: the same streams; at +5 s backend b3 starts answering HTTP 500 to every generation
  (its /metrics stay healthy), at +10 s b2 is killed (SIGKILL), at +35 s b2 is started again
  (times for a 60 s phase; scaled with ``--duration``).
- ``faults_no_continuation``: the same faults at the same moments, on a gateway with
  ``continuation: {enabled: false}``, the load running ``--compare-duration`` seconds (30 s:
  the kill falls in the first wave of streams either way). Each faults phase runs on a fresh
  stack (backends and gateway started anew), so both start alike; clean and hostile share one.

Measured: errors before the first byte, malformed SSE frames, streams cut by an error event, the
failing backend's share of first attempts after its ejection (from the gateway's
``quantroute_upstream_attempts_total``), time to eject b3 and b2 and to re-admit b2 (from polling
``/admin/backends`` every 0.25 s), and the gateway's RSS at start, peak and end of each phase.
In each faults phase, the streams b2 was serving when it was killed and how they ended
(``killed_streams``: completed, continued, ended by an error event); ``continuation_on_vs_off``
puts the two side by side. Writes ``results.json`` beside this file (or in ``--output-dir``),
logs under ``logs/`` (per stack; ``monitor-<phase>.json``: the admin and counter samples).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
BACKENDS = ("b1", "b2", "b3")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]


def start(name: str, cmd: list[str], log_dir: Path, ready: str | None = None) -> Proc:
    path = log_dir / f"{name}.log"
    offset = path.stat().st_size if path.exists() else 0  # a restart appends: read what is new
    log = path.open("ab")
    popen = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    proc = Proc(name, popen)
    if ready is not None:
        deadline = time.monotonic() + 60
        while ready not in path.read_bytes()[offset:].decode(errors="replace"):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log_dir / name}.log")
            time.sleep(0.1)
    return proc


def stop(proc: Proc, sig: int = signal.SIGTERM, wait_s: float = 15) -> int | None:
    if proc.popen.poll() is None:
        try:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait(wait_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(5)
    return proc.popen.returncode


Row = dict[str, Any]
"""One backend's row of /admin/backends (JSON)."""


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as r:
        r.read()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def first_attempts(gateway: str) -> dict[str, float]:
    """First attempts per backend, and ``<backend>:failed`` for its failed attempts."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(gateway + "/metrics", timeout=30) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    failures = {"server_error", "connect_error", "connect_timeout", "reset", "timeout"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "quantroute_upstream_attempts_total" and s.labels["attempt"] == "first":
                found[s.labels["backend"]] = found.get(s.labels["backend"], 0) + s.value
            if s.name == "quantroute_upstream_outcomes_total" and s.labels["outcome"] in failures:
                key = s.labels["backend"] + ":failed"
                found[key] = found.get(key, 0) + s.value
    return found


@dataclass
class Monitor:
    """Polls the gateway's RSS and /admin/backends in a thread during a phase."""

    gateway: str
    pid: int
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    rss: list[tuple[float, float]] = field(default_factory=list)
    admin: list[tuple[float, dict[str, Row]]] = field(default_factory=list)
    attempts: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        polls = 0
        while not self._stop.is_set():
            self.rss.append((time.monotonic() - self.started, rss_mb(self.pid)))
            try:
                # stamped when the answer came: a loaded gateway may take seconds to answer,
                # and what it shows may be that recent
                rows = get_json(self.gateway + "/admin/backends")["backends"]
                self.admin.append((time.monotonic() - self.started, {r["id"]: r for r in rows}))
                if polls % 4 == 0:
                    counters = first_attempts(self.gateway)
                    self.attempts.append((time.monotonic() - self.started, counters))
            except (OSError, ValueError):
                pass
            polls += 1
            self._stop.wait(0.25)
        self.attempts.append((time.monotonic() - self.started, first_attempts(self.gateway)))

    def value_at(self, key: str, when: float | None) -> float | None:
        """A sampled counter at the first sample at or after ``when``."""
        if when is None:
            return None
        return next((a.get(key, 0.0) for t, a in self.attempts if t >= when), None)

    def first_above(self, key: str, since: float) -> float | None:
        """The time of the first sample after ``since`` where counter ``key`` grew."""
        base = self.value_at(key, since)
        return next(
            (t for t, a in self.attempts if t >= since and a.get(key, 0.0) > (base or 0.0)), None
        )

    def attempts_share_after(self, backend: str, since: float | None) -> float | None:
        """``backend``'s share of first attempts from ``since`` to the end of the phase."""
        if since is None or not self.attempts:
            return None
        start = next((a for t, a in self.attempts if t >= since), None)
        end = self.attempts[-1][1]
        if start is None:
            return None
        delta = {b: end.get(b, 0.0) - start.get(b, 0.0) for b in end if ":" not in b}
        total = sum(delta.values())
        return None if total <= 0 else delta.get(backend, 0.0) / total

    @contextmanager
    def watching(self) -> Iterator[Monitor]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)

    def first_time(
        self, backend: str, predicate: Callable[[Row], bool], after: float = 0.0
    ) -> float | None:
        for t, rows in self.admin:
            if t >= after and backend in rows and predicate(rows[backend]):
                return t
        return None

    def dump(self, path: Path) -> None:
        """The samples, for a look afterwards: per poll each backend's state, ejection and
        failure streak; the attempt counters."""
        keep = ("state", "consecutive_failures")
        admin = [
            {
                "t": round(t, 3),
                **{
                    b: {
                        **{k: row.get(k) for k in keep},
                        "passive": {
                            k: (row.get("passive_health") or {}).get(k)
                            for k in ("ejected", "consecutive_failures", "suspect")
                        },
                    }
                    for b, row in rows.items()
                },
            }
            for t, rows in self.admin
        ]
        attempts = [{"t": round(t, 3), **a} for t, a in self.attempts]
        path.write_text(json.dumps({"admin": admin, "attempts": attempts}))

    def rss_summary(self) -> dict[str, float]:
        values = [v for _, v in self.rss] or [0.0]
        return {"start_mb": values[0], "peak_mb": max(values), "end_mb": values[-1]}


def routable(row: Row) -> bool:
    health = row.get("passive_health") or {}
    return row.get("state") == "fresh" and not health.get("ejected")


def ejected(row: Row) -> bool:
    return bool((row.get("passive_health") or {}).get("ejected"))


FAULT_PHASES = ("faults", "faults_no_continuation")
"""Each runs on a fresh stack (backends and gateway), so the two start from the same state."""


EJECTED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) WARNING quantroute\.health: backend (\S+) ejected"
)


def logged_ejections(log: Path, monitor: Monitor) -> list[tuple[float, str]]:
    """The gateway's own ejection log lines (WARNING, stamped when it ejected), as seconds into
    the phase: exact where the admin polls wait on a busy gateway."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        m = EJECTED.match(line)
        if m is not None:
            wall = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
            if wall >= monitor.started_wall:
                found.append((wall - monitor.started_wall, m[3]))
    return found


def killed_streams(records: list[Row], killed_at: float) -> dict[str, object]:
    """The streams b2 was serving when it was killed (it sent their first chunk, they began
    before the kill and had not ended), and how they ended."""
    hit = [
        r
        for r in records
        if r["backend"] == "b2"
        and r["ttfb_s"] is not None
        and r["started"] <= killed_at <= r["started"] + r["duration_s"]
    ]
    completed = sum(1 for r in hit if r["status"] == 200 and r["done"] and not r["error_event"])
    return {
        "on_b2_when_killed": len(hit),
        "completed": completed,
        "completed_share": None if not hit else completed / len(hit),
        "continued": sum(1 for r in hit if r["continued"]),
        "ended_by_error_event": sum(1 for r in hit if r["error_event"]),
        "cut_without_error_event": sum(1 for r in hit if not r["done"] and not r["error_event"]),
        "malformed_frames": sum(r["malformed"] for r in hit),
    }


class Soak:
    """The processes of one stack: three backends and the gateway (:meth:`up`, :meth:`down`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.output_dir)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stack_logs = self.logs
        self.ports: dict[str, int] = {}
        self.gw_port = 0
        self.gateway = ""
        self.continuation = True
        self.procs: dict[str, Proc] = {}

    def backend(self, name: str) -> Proc:
        cmd = [
            PY,
            str(HERE / "backend.py"),
            "--id",
            name,
            "--port",
            str(self.ports[name]),
            "--time-scale",
            str(self.args.time_scale),
            "--kind",
            self.args.backend,
            "--token-interval",
            str(self.args.token_interval),
        ]
        return start(name, cmd, self.stack_logs, ready="READY")

    def config(self) -> Path:
        rows = "\n".join(
            f"  - {{id: {b}, url: 'http://127.0.0.1:{p}', served_model_name: soak-model, "
            f"variant: soak, max_seq_len: 8192, capacity: 1024, gpu: H100, gpu_cost_per_hour: 4.5}}"
            for b, p in self.ports.items()
        )
        path = self.out / "gateway.yaml"
        path.write_text(
            f"listen: {{host: 127.0.0.1, port: {self.gw_port}}}\nbackends:\n{rows}\n"
            "groups:\n  - {name: auto, variants: [soak]}\n"
            "policy: {scrape_interval_s: 1.0, staleness_limit_s: 5.0}\n"
            f"continuation: {{enabled: {str(self.continuation).lower()}}}\n"
        )
        return path

    def up(self, tag: str, continuation: bool) -> None:
        """A fresh stack on fresh ports, its logs under ``logs/<tag>/``."""
        self.stack_logs = self.logs / tag
        self.stack_logs.mkdir(parents=True, exist_ok=True)
        self.continuation = continuation
        self.ports = {b: free_port() for b in BACKENDS}
        self.gw_port = free_port()
        self.gateway = f"http://127.0.0.1:{self.gw_port}"
        for name in BACKENDS:
            self.procs[name] = self.backend(name)
        quantroute = str(Path(PY).parent / "quantroute")
        self.procs["gateway"] = start(
            "gateway",
            [quantroute, "serve", "--config", str(self.config()), "--log-level", "warning"],
            self.stack_logs,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if get_json(self.gateway + "/ready"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway not ready")
            time.sleep(0.2)

    def down(self) -> None:
        for proc in self.procs.values():
            stop(proc)
        self.procs = {}

    def __enter__(self) -> Soak:
        return self

    def __exit__(self, *_: object) -> None:
        self.down()

    def load(self, phase: str) -> subprocess.Popen[bytes]:
        a = self.args
        cmd = [
            PY,
            str(HERE / "loadgen.py"),
            "--url",
            self.gateway,
            "--streams",
            str(a.streams),
            "--duration",
            str(a.duration),
            "--max-tokens",
            str(a.max_tokens),
            "--out",
            str(self.out / f"load-{phase}.json"),
            "--records",
            str(self.logs / f"records-{phase}.jsonl"),
        ]
        if phase == "faults_no_continuation":
            cmd[cmd.index("--duration") + 1] = str(a.compare_duration or a.duration)
        return subprocess.Popen(
            cmd, stdout=(self.logs / f"load-{phase}.log").open("wb"), stderr=subprocess.STDOUT
        )

    def phase(self, name: str) -> dict[str, object]:
        pid = self.procs["gateway"].popen.pid
        monitor = Monitor(self.gateway, pid)
        hostile = None
        events: dict[str, float] = {}
        with monitor.watching():
            load = self.load(name)
            if name == "hostile":
                hostile = subprocess.Popen(
                    [
                        PY,
                        str(HERE / "hostile.py"),
                        "--url",
                        self.gateway,
                        "--duration",
                        str(self.args.duration),
                        "--out",
                        str(self.out / "hostile.json"),
                    ],
                    stdout=(self.stack_logs / "hostile.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            if name in FAULT_PHASES:
                events = self.inject(monitor)
            load.wait(self.args.duration + 300)
            if hostile is not None:
                hostile.wait(60)
        result: dict[str, object] = json.loads((self.out / f"load-{name}.json").read_text())
        result["rss"] = monitor.rss_summary()
        if hostile is not None:
            result["hostile"] = json.loads((self.out / "hostile.json").read_text())
        result["continuation_enabled"] = self.continuation
        if name in FAULT_PHASES:
            records = [json.loads(line) for line in (self.logs / f"records-{name}.jsonl").open()]
            t0_load = result.pop("t0_monotonic")
            assert isinstance(t0_load, float)
            offset = t0_load - monitor.started  # the records on the monitor's time line
            for r in records:
                r["started"] += offset
            result["faults"] = self.fault_figures(monitor, events, records)
            result["killed_streams"] = killed_streams(records, events["b2_killed_at"])
            monitor.dump(self.logs / f"monitor-{name}.json")
        return result

    def inject(self, monitor: Monitor) -> dict[str, float]:
        """The fault schedule (for a ``--duration`` phase, also in the shorter comparison
        phase: the same faults at the same moments). Returns the events, seconds into the
        phase."""
        t0 = monitor.started
        events: dict[str, float] = {}

        def at(offset: float) -> None:
            time.sleep(max(0.0, t0 + offset - time.monotonic()))

        d = self.args.duration / 60.0  # the schedule below is for a 60 s phase
        at(5 * d)
        post(f"http://127.0.0.1:{self.ports['b3']}/_soak/fault?mode=500")
        events["b3_500_at"] = time.monotonic() - t0
        at(10 * d)
        killed = time.monotonic()
        stop(self.procs["b2"], signal.SIGKILL)
        events["b2_killed_at"] = killed - t0
        at(35 * d)
        self.procs["b2"] = self.backend("b2")
        events["b2_restarted_at"] = time.monotonic() - t0
        return events

    def fault_figures(
        self, monitor: Monitor, events: dict[str, float], served: list[Row]
    ) -> dict[str, object]:
        logged = logged_ejections(self.stack_logs / "gateway.log", monitor)
        b3_logged = next((t for t, b in logged if b == "b3" and t >= events["b3_500_at"]), None)
        b2_logged = next((t for t, b in logged if b == "b2" and t >= events["b2_killed_at"]), None)
        b3_out = monitor.first_time("b3", ejected, events["b3_500_at"])
        b2_out = monitor.first_time("b2", lambda r: not routable(r), events["b2_killed_at"])
        b2_down = monitor.first_time("b2", lambda r: r["state"] == "down", events["b2_killed_at"])
        b2_back = monitor.first_time("b2", routable, events["b2_restarted_at"])
        b2_first = min(
            (
                r["started"]
                for r in served
                if r["backend"] == "b2" and r["started"] >= events["b2_restarted_at"]
            ),
            default=None,
        )
        return {
            **events,
            "b3_time_to_eject_s": _after(b3_out, events["b3_500_at"]),
            "ejections_logged_at": [(round(t, 3), b) for t, b in logged],
            "b3_time_to_eject_logged_s": _after(b3_logged, events["b3_500_at"]),
            "b2_time_to_eject_logged_s": _after(b2_logged, events["b2_killed_at"]),
            "b2_time_to_leave_routing_s": _after(b2_out, events["b2_killed_at"]),
            "b2_time_to_readmit_s": _after(b2_back, events["b2_restarted_at"]),
            "b2_first_request_after_restart_s": _after(b2_first, events["b2_restarted_at"]),
            "b3_first_attempt_share_after_ejection": monitor.attempts_share_after("b3", b3_out),
            "b3_failed_attempts_until_ejected": monitor.value_at("b3:failed", b3_out),
            "b3_first_failure_at": monitor.first_above("b3:failed", events["b3_500_at"]),
            "b3_first_attempt_share_before_ejection": monitor.attempts_share_after("b3", 0.0),
            "b3_admin_at_end": (monitor.admin[-1][1].get("b3") or {}).get("passive_health"),
            # why b3's ejection waits (see the README's "Proof"): when b2 was marked down, and
            # what b3 failed and what the load generator began from then until b3's ejection
            "b2_marked_down_at": b2_down,
            "b3_failed_attempts_at_b2_down": monitor.value_at("b3:failed", b2_down),
            "requests_started_between_b2_down_and_b3_ejection": None
            if b2_down is None
            else sum(1 for r in served if b2_down <= r["started"] < (b3_out or float("inf"))),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--time-scale", type=float, default=0.03, help="--backend sim")
    parser.add_argument(
        "--backend",
        choices=("sim", "fake"),
        default="sim",
        help="sim: quantroute.sim engines; fake: FakeBackend (no engine, much cheaper)",
    )
    parser.add_argument("--token-interval", type=float, default=0.5, help="--backend fake")
    parser.add_argument(
        "--phases",
        nargs="+",
        default=["clean", "hostile", "faults", "faults_no_continuation"],
        choices=("clean", "hostile", *FAULT_PHASES),
    )
    parser.add_argument(
        "--compare-duration",
        type=float,
        default=30.0,
        help="load duration of faults_no_continuation (0: --duration); its faults keep the "
        "--duration schedule",
    )
    parser.add_argument("--output-dir", default=str(HERE))
    args = parser.parse_args()
    results: dict[str, object] = {
        "args": vars(args),
        "load_average_at_start": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    with Soak(args) as soak:
        running = False
        for name in args.phases:
            if name in FAULT_PHASES or not running:
                soak.down()
                soak.up(name if name in FAULT_PHASES else "main", name != FAULT_PHASES[1])
                running = True
            results[name] = soak.phase(name)
            print(f"{name}: {json.dumps(results[name], indent=1)[:2000]}", flush=True)
    on, off = results.get("faults"), results.get("faults_no_continuation")
    if isinstance(on, dict) and isinstance(off, dict):
        results["continuation_on_vs_off"] = {
            "on": on["killed_streams"],
            "off": off["killed_streams"],
        }
    clean, hostile = results.get("clean"), results.get("hostile")
    if isinstance(clean, dict) and isinstance(hostile, dict):
        results["hostile_vs_clean"] = {
            key: (hostile[key] / clean[key]) if clean.get(key) and hostile.get(key) else None
            for key in ("ttfb_p99_s", "duration_p99_s", "ttfb_p50_s")
        }
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
    return 0


def _after(moment: float | None, since: float) -> float | None:
    """Seconds from ``since`` to ``moment`` (None: it never happened)."""
    return None if moment is None else moment - since


if __name__ == "__main__":
    raise SystemExit(main())
