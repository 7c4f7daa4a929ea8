"""``quantroute tune`` end to end on a small log: Pareto set, the chosen policy written as a
fragment the config accepts, and the tuned policy judged on a holdout trace."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from quantroute.cli import main
from quantroute.config import load_config
from quantroute.replay.synth import TraceParams, generate
from quantroute.replay.trace import load_trace, save_trace
from quantroute.state.matrix_source import load_matrix
from quantroute.tune.candidates import Candidate, apply
from quantroute.tune.pareto import QUALITY_TOLERANCE
from quantroute.tune.search import evaluate

DEMO = Path(__file__).resolve().parents[2] / "src" / "quantroute" / "demo" / "gateway.yaml"


def _trace(path: Path, seed: int) -> Path:
    save_trace(
        path, generate(TraceParams(requests=300, seed=seed, rate_per_s=8.0, batch_share=0.2))
    )
    return path


def test_tune_writes_a_policy_that_beats_the_default_on_a_holdout(
    tmp_path: Path, capsys: object
) -> None:
    tune_on, holdout = _trace(tmp_path / "a.jsonl", 21), _trace(tmp_path / "b.jsonl", 22)
    out, report = tmp_path / "tuned.yaml", tmp_path / "tune.json"
    code = main(["tune", "--log", str(tune_on), "--config", str(DEMO), "--candidates", "8",
                 "--objective", "cost", "--out", str(out), "--json", str(report),
                 "--holdout", str(holdout)])  # fmt: skip
    assert code == 0
    result = json.loads(report.read_text())
    names = [c["name"] for c in result["candidates"]]
    assert names[0] == "default" and len(names) == 8
    assert result["pareto"] and set(result["pareto"]) <= set(names)
    chosen = next(c for c in result["candidates"] if c["name"] == result["chosen"])
    default = result["candidates"][0]
    assert chosen["name"] != "default" and chosen["cost_per_1m"] < default["cost_per_1m"]
    fragment = yaml.safe_load(out.read_text())
    assert fragment == chosen["fragment"]
    config = load_config(DEMO)
    tuned = apply(config, fragment)  # the fragment is a valid config over the user's
    assert tuned.policy != config.policy
    # Judged on a trace it never saw: cheaper, without giving up quality or serving fewer.
    assert config.matrix_path is not None
    matrix = load_matrix(config.matrix_path)
    rows = load_trace(holdout)
    base = evaluate(rows, config, matrix, Candidate("default", {}))
    mine = evaluate(rows, config, matrix, Candidate("tuned", fragment))
    assert mine.cost_per_1m is not None and base.cost_per_1m is not None
    assert mine.cost_per_1m < base.cost_per_1m
    assert (mine.quality_share or 0) >= (base.quality_share or 0) - QUALITY_TOLERANCE
    assert mine.refused <= base.refused


def test_a_bad_log_is_a_config_error_with_the_line(tmp_path: Path, capsys: object) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["tune", "--log", str(bad), "--config", str(DEMO)]) == 2
