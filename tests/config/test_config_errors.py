"""Config error messages, one row per kind of mistake: each names the file, the field and the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from quantroute.config import load_config
from quantroute.errors import ConfigError

BACKEND = {
    "id": "a",
    "url": "http://a:8000",
    "served_model_name": "m",
    "max_seq_len": 8192,
    "capacity": 8,
}


def with_backend(**fields: Any) -> dict[str, Any]:
    return {"backends": [{**BACKEND, **fields}]}


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("wrong type", with_backend(max_seq_len="lots"), ["backends.0.max_seq_len", "valid integer", "'lots'"]),
    ("out of range", with_backend(max_seq_len=-5), ["backends.0.max_seq_len", "greater than 0", "-5"]),
    ("fraction above 1", {"policy": {"kv_hard_ceiling": 1.5}}, ["policy.kv_hard_ceiling", "less than or equal to 1", "1.5"]),
    ("missing field", {"backends": [{"id": "a", "url": "http://a:8000"}]}, ["backends.0.served_model_name", "Field required"]),
    ("unknown key", {"policy": {"kv_pressure_treshold": 0.8}}, ["policy.kv_pressure_treshold", "Extra inputs are not permitted", "0.8"]),
    ("bad pattern", with_backend(url="a:8000"), ["backends.0.url", "should match pattern", "'a:8000'"]),
    ("bad enum", with_backend(quantization="int3"), ["backends.0.quantization", "'int3'"]),
    ("bad literal", {"policy": {"quality_fallback": "maybe"}}, ["policy.quality_fallback", "'maybe'"]),
    ("cross-field rule", {"policy": {"kv_hard_ceiling": 0.8, "kv_pressure_threshold": 0.9}}, ["kv_hard_ceiling must be >= kv_pressure_threshold"]),
    ("duplicate ids", {"backends": [BACKEND, BACKEND]}, ["duplicate backend id(s): a"]),
    ("group names an unknown variant", {**with_backend(), "groups": [{"name": "g", "variants": ["b"]}]}, ["group 'g' names unknown variant(s) ['b']", "known: ['a']"]),
    ("unknown plugin", {"policy": {"scorers": {"batch": [{"name": "cheapest"}]}}}, ["policy.scorers.batch.0.name", "unknown scorer 'cheapest'"]),
    ("plugin parameter", {"policy": {"picker": {"name": "best", "parameters": {"k": 2}}}}, ["policy.picker.parameters.k", "got 2"]),
]  # fmt: skip


@pytest.mark.parametrize(("data", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_field_is_named_with_its_value(
    tmp_path: Path, data: dict[str, Any], needles: list[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid configuration"), message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("backends: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "top level must be a mapping, got list"),
    ],
)
def test_a_file_that_is_not_a_config_mapping(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_an_unreadable_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read configuration"):
        load_config(tmp_path / "missing.yaml")


def test_every_problem_is_listed_not_just_the_first(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(with_backend(max_seq_len=0, capacity=0)), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "(2 problem(s))" in message
    assert "backends.0.max_seq_len" in message and "backends.0.capacity" in message
