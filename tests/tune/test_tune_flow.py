"""``quantroute tune`` searches flow-control settings: its candidates carry them, they are valid
config, and one changes the replay's outcome the way it should on a saturated fleet."""

from __future__ import annotations

from pathlib import Path

from quantroute.config import GatewayConfig, load_config, parse_config
from quantroute.core.model import LatencyClass
from quantroute.replay.trace import TraceRow
from quantroute.tune.candidates import Candidate, apply, candidates
from quantroute.tune.search import search

DEMO = Path(__file__).resolve().parents[2] / "src" / "quantroute" / "demo" / "gateway.yaml"


def _saturated_fleet() -> tuple[GatewayConfig, list[TraceRow]]:
    """One simulated 70B AWQ behind ``auto``; 50 batch requests in 0.1 s, then 20 interactive:
    more than its KV cache takes between two scrapes (the group is saturated)."""
    backend = {"id": "big", "url": "http://127.0.0.1:9", "served_model_name": "llama3-70b-awq",
               "variant": "llama3-70b-awq", "max_seq_len": 8192, "capacity": 128}  # fmt: skip
    config = parse_config(
        {"backends": [backend], "groups": [{"name": "auto", "variants": ["llama3-70b-awq"]}],
         "policy": {"scrape_interval_s": 0.5}},
        "<test>",
    )  # fmt: skip
    rows = [
        TraceRow(f"r{i:03d}", round(i * 0.002 if i < 50 else 0.2 + (i - 50) * 0.01, 4), "chat",
                 3000, 2048, 600, LatencyClass.BATCH if i < 50 else LatencyClass.INTERACTIVE)
        for i in range(70)
    ]  # fmt: skip
    return config, rows


def test_a_flow_control_candidate_changes_the_replay_as_expected() -> None:
    config, rows = _saturated_fleet()
    reject = Candidate("reject", {"policy": {"flow_control": {"on_saturation": "reject"}}})
    queue = Candidate("queue", {"policy": {"flow_control": {"on_saturation": "queue"}}})
    hurried = Candidate("hurried", {"policy": {"flow_control": {"max_wait_s": 0.3}}})
    scored = search(rows, config, None, [Candidate("default", {}), reject, queue, hurried])
    by = {s.candidate.name: s.summary for s in scored}
    # reject answers the saturated requests at once; queue serves them all after a wait
    assert by["reject"].refused >= 30 and by["reject"].queued == 0
    assert by["queue"].refused == 0 and by["queue"].served == 70
    assert by["queue"].queued >= by["reject"].refused
    assert by["default"] == by["queue"]  # queue is the default
    # a short max_wait_s (0.3 s) refuses those that would have waited longer: it serves more
    # than reject (requests that found room within 0.3 s) and fewer than an unhurried queue
    assert by["reject"].served < by["hurried"].served < by["queue"].served


def test_candidates_draw_flow_control_settings_that_the_config_accepts() -> None:
    config = load_config(DEMO)
    pool = candidates(config, 12, seed=0)
    drawn = [c for c in pool[1:] if "flow_control" in c.fragment["policy"]]
    assert len(drawn) == 11
    modes, limits = set(), set()
    for candidate in drawn:
        tuned = apply(config, candidate.fragment)
        fc = candidate.fragment["policy"]["flow_control"]
        assert tuned.policy.flow_control.on_saturation == fc["on_saturation"]
        assert tuned.policy.flow_control.max_wait_s == fc["max_wait_s"]
        modes.add(fc["on_saturation"])
        limits.add(next((f.parameters["limit"] for f in tuned.policy.filters
                         if f.name == "waiting"), None))  # fmt: skip
    assert {"queue", "reject"} <= modes and len(limits) >= 2  # queue bounds and thresholds vary


def test_a_group_with_its_own_on_saturation_gets_the_drawn_mode() -> None:
    config = load_config(DEMO)
    groups = [g.model_copy(update={"on_saturation": "downgrade"}) for g in config.groups]
    config = config.model_copy(update={"groups": tuple(groups)})
    for candidate in candidates(config, 6, seed=3)[1:]:
        tuned = apply(config, candidate.fragment)
        mode = candidate.fragment["policy"]["flow_control"]["on_saturation"]
        assert {g.on_saturation for g in tuned.groups} == {mode}
