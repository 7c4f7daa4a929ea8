"""What a client's ``model`` selects when it is not a group (the README's Configuration section)."""

from __future__ import annotations

from quantroute.testing.fake_backend import FakeState

from .conftest import FleetFactory


def test_a_served_model_name_balances_over_every_backend_serving_it(
    make_fleet: FleetFactory,
) -> None:
    """Not a pin: two replicas of one model (as strict DNS or pod discovery list them) both serve
    requests that name the model; a backend's id selects that backend alone."""
    fleet = make_fleet(
        {
            "llama-10.0.0.1": FakeState(served_model_name="meta/llama"),
            "llama-10.0.0.2": FakeState(served_model_name="meta/llama"),
            "qwen": FakeState(served_model_name="qwen/qwen"),
        },
        policy={"picker": "round_robin"},
        groups=[{"name": "auto", "variants": ["llama", "qwen"]}],
        backend_overrides={
            "llama-10.0.0.1": {"variant": "llama"},
            "llama-10.0.0.2": {"variant": "llama"},
        },
    )
    assert fleet.picks(6, model="meta/llama") == {"llama-10.0.0.1", "llama-10.0.0.2"}
    assert fleet.picks(6, model="llama") == {"llama-10.0.0.1", "llama-10.0.0.2"}  # the variant
    assert fleet.picks(4, model="llama-10.0.0.2") == {"llama-10.0.0.2"}
    sent = [r["model"] for r in fleet.backends["llama-10.0.0.2"].state.received]
    assert set(sent) == {"meta/llama"}  # always rewritten to the served name
