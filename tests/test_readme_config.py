"""The README's configuration table names every field of the config models."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from quantroute.config import GatewayConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def field_names(model: type[BaseModel]) -> set[str]:
    """Every field name of the model and of the models it contains, recursively."""
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for nested in _models(info.annotation):
            names |= field_names(nested)
    return names


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models(arg)]


def table() -> str:
    text = README.read_text()
    start = text.index("| section | field | default | meaning |")
    return text[start : text.index("\n\n", start)]


def test_every_config_field_is_in_the_readme_table() -> None:
    documented = {
        token for code in re.findall(r"`([^`]+)`", table()) for token in re.findall(r"\w+", code)
    }
    assert field_names(GatewayConfig) - documented == set()


def test_the_table_check_sees_a_missing_field() -> None:
    class Extra(BaseModel):
        frobnication_level: int = 0

    class Wider(GatewayConfig):
        extra: Extra = Extra()

    documented = {t for c in re.findall(r"`([^`]+)`", table()) for t in re.findall(r"\w+", c)}
    assert field_names(Wider) - documented == {"extra", "frobnication_level"}
