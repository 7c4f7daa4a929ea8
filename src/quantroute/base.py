"""Small shared types: the injected clock's type and the base of every frozen config model."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

Clock = Callable[[], float]
"""Seconds from an arbitrary origin (``time.monotonic`` in production, a fake in tests)."""


class FrozenModel(BaseModel):
    """Immutable, and a misspelt key is an error rather than silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")
