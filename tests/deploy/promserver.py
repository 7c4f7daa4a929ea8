"""A real Prometheus on loopback for tests: the shipped scrape config with injected targets."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from quantroute.testing.procs import free_port

from .helpers import (
    PROMETHEUS_CONFIG,
    RULES_FILE,
    alert_exprs,
    dashboard_exprs,
    metric_names,
    tool,
)

# A scrape target: "host:port" and the labels Prometheus adds to its series.
Target = tuple[str, Mapping[str, str]]


def scrape_config(targets: Mapping[str, Sequence[Target]], rules: Path = RULES_FILE) -> Any:
    """deploy/prometheus/prometheus.yml with each job's targets replaced by ``targets[job]``."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) == set(jobs), f"targets for {sorted(targets)}, jobs {sorted(jobs)}"
    for name, job in jobs.items():
        job["static_configs"] = [
            {"targets": [address], "labels": dict(labels)} for address, labels in targets[name]
        ]
    config["rule_files"] = [str(rules)]
    return config


class PrometheusServer:
    def __init__(self, workdir: Path, targets: Mapping[str, Sequence[Target]]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(scrape_config(targets)))
        self.log = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    def start(self) -> PrometheusServer:
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ready = self.wait_for(self._ready, timeout_s=60)
        assert ready, f"prometheus did not become ready:\n{self.log.read_text()[-2000:]}"
        return self

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-2000:]}")
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self._http.close()
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        response = self._http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; scalars come back as one sample without labels."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            result: list[dict[str, Any]] = data["result"]
            return result
        return [{"metric": {}, "value": data["result"]}]

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval_s)
        return predicate()


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [v for sample in result if math.isfinite(v := float(sample["value"][1]))]


def missing_metrics(prom: PrometheusServer, expr: str) -> list[str]:
    """The quantroute/vLLM series names an expression uses that have no data in ``prom``."""
    return sorted(name for name in metric_names(expr) if not prom.query(name))


def query_problems(
    prom: PrometheusServer, exprs: Sequence[tuple[str, str]], *, finite: bool
) -> dict[str, str]:
    """What is wrong with each query: a used metric without data, or (``finite``) no finite value."""
    problems = {}
    for where, expr in exprs:
        missing = missing_metrics(prom, expr)
        if missing:
            problems[where] = f"no data for {missing}"
        elif finite and not finite_values(prom.query(expr)):
            problems[where] = f"no finite value: {prom.query(expr)}"
    return problems


def all_query_problems(prom: PrometheusServer) -> dict[str, str]:
    """Dashboard queries must give a finite value; alert queries, data for every metric they use."""
    return {
        **query_problems(prom, dashboard_exprs(), finite=True),
        **query_problems(prom, alert_exprs(), finite=False),
    }
