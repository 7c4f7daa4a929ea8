"""Small builders for tests of the state and resilience layers: a hand-set clock and a backend."""

from __future__ import annotations

from quantroute.config import BackendConfig


class ManualClock:
    """A monotonic clock a test sets by hand (``clock.now += 5``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def plain_backend(backend_id: str) -> BackendConfig:
    """A backend of model ``m``, variant ``v``, at ``http://<id>:8000`` (never contacted: state-only
    tests)."""
    return BackendConfig(
        id=backend_id,
        url=f"http://{backend_id}:8000",
        served_model_name="m",
        variant="v",
        max_seq_len=8192,
        capacity=8,
    )
