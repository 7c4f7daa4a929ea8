"""Alert rules, scrape config and dashboard: checked by promtool and against the real metric names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from quantroute.telemetry import Telemetry

from .helpers import (
    DASHBOARD,
    DEPLOY,
    FIXTURES,
    OVERLAYS,
    PROMETHEUS_CONFIG,
    RULES_FILE,
    adapter_rules,
    alert_exprs,
    alert_rules,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    metric_names,
    one,
    render_overlay,
    tool,
)

PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yml"
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def gateway_series_names() -> set[str]:
    """Every series name the gateway's Telemetry can expose (from its metric definitions)."""
    names = set()
    for family in Telemetry().registry.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def vllm_series_names() -> set[str]:
    """Every series name in the recorded /metrics of a real vLLM 0.32.0."""
    names = set()
    for capture in sorted(FIXTURES.glob("vllm_metrics_*.txt")):
        for family in text_string_to_metric_families(capture.read_text()):
            names |= {sample.name for sample in family.samples}
    return names


def test_alert_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rules_behave_as_promtool_unit_tests_expect() -> None:
    result = _promtool("test", "rules", str(PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    broken = yaml.safe_load(RULES_FILE.read_text())
    broken["groups"][0]["rules"][0]["expr"] = "max without (engine) (vllm:kv_cache_usage_perc > "
    path = tmp_path / "broken.rules.yml"
    path.write_text(yaml.safe_dump(broken))
    assert _promtool("check", "rules", str(path)).returncode != 0


def test_prometheus_rule_object_carries_the_same_rules() -> None:
    for overlay in OVERLAYS:
        rule = one(render_overlay(overlay), "PrometheusRule", "quantroute")
        assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())


def test_demo_scrape_config_passes_promtool_check() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrape_config_gives_the_labels_the_adapter_needs() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes-pods.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    needed = {label for rule in adapter_rules() for label in rule["resources"]["overrides"]}
    assert needed <= targets
    keep = job["relabel_configs"][0]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert keep["action"] == "keep"


def test_every_metric_name_in_rules_dashboard_and_adapter_exists() -> None:
    known = gateway_series_names() | vllm_series_names()
    exprs = [*alert_exprs(), *dashboard_exprs()]
    exprs += [(rule["name"]["as"], rule["seriesQuery"]) for rule in adapter_rules()]
    unknown = {
        where: sorted(metric_names(e) - known) for where, e in exprs if metric_names(e) - known
    }
    assert unknown == {}
    assert all(metric_names(e) for _, e in exprs), "a query selects no quantroute or vLLM series"


def test_the_names_checked_against_are_the_real_ones() -> None:
    assert "vllm:kv_cache_usage_perc" in vllm_series_names()
    assert "vllm:gpu_cache_usage_perc" not in vllm_series_names()
    assert {
        "llm_router_route_duration_seconds_bucket",
        "llm_router_cache_pressure_events_total",
        "quantroute_requests_total",
        "quantroute_in_flight_requests",
    } <= gateway_series_names()


def test_alerts_cover_what_the_issue_asks_for() -> None:
    used = {name: metric_names(expr) for name, expr in alert_exprs()}
    kv = [n for n, m in used.items() if "vllm:kv_cache_usage_perc" in m]
    assert any("> 0.80" in dict(alert_exprs())[n] for n in kv)
    assert any("vllm:num_requests_waiting" in m for m in used.values())
    assert any('status="503"' in e for _, e in alert_exprs())
    assert any('state="stale"' in e for _, e in alert_exprs())
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


PANELS_ASKED_FOR = {
    "GPU cache pressure per backend": {"vllm:kv_cache_usage_perc"},
    "queue depth": {"vllm:num_requests_waiting"},
    "router decision latency": {"llm_router_route_duration_seconds_bucket"},
    "traffic share per variant": {"quantroute_requests_total"},
    "cost per 1M tokens": {
        "quantroute_backend_gpu_cost_per_hour",
        "quantroute_completion_tokens_total",
    },
    "cache-pressure reroutes": {"llm_router_cache_pressure_events_total"},
}


@pytest.mark.parametrize("topic", sorted(PANELS_ASKED_FOR))
def test_dashboard_has_a_panel_for(topic: str) -> None:
    assert any(PANELS_ASKED_FOR[topic] <= metric_names(expr) for _, expr in dashboard_exprs())


def test_dashboard_is_importable_grafana_json() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    (variable,) = dash["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    panels = list(dashboard_panels(dash))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    rendered = one(render_overlay("default"), "ConfigMap", "quantroute-grafana-dashboard")
    assert rendered["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert rendered["data"]["quantroute.json"] == DASHBOARD.read_text()
