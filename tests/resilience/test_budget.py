"""Retry budget: a share of the window's requests, at least a floor, forgetting old seconds."""

from __future__ import annotations

import pytest

from quantroute.resilience.budget import RetryBudget
from quantroute.resilience.settings import RetryBudget as Settings


@pytest.mark.parametrize(
    ("requests", "ratio", "min_retries", "granted"),
    [
        (0, 0.2, 3, 3),  # a quiet gateway still retries a lone failure
        (10, 0.2, 3, 3),
        (100, 0.2, 3, 20),  # fleet-wide failure: at most a fifth more load
        (100, 0.0, 0, 0),
        (100, 1.0, 0, 100),
        (7, 0.5, 0, 3),
    ],
)
def test_budget_grants_a_share_of_requests(
    requests: int, ratio: float, min_retries: int, granted: int
) -> None:
    budget = RetryBudget(Settings(ratio=ratio, min_retries=min_retries, window_s=10))
    for _ in range(requests):
        budget.request(5.0)
    assert sum(budget.try_retry(5.5) for _ in range(requests + 10)) == granted


def test_window_slides() -> None:
    budget = RetryBudget(Settings(ratio=0.5, min_retries=0, window_s=10))
    for _ in range(10):
        budget.request(0.0)
    assert sum(budget.try_retry(1.0) for _ in range(10)) == 5
    assert not budget.try_retry(9.9)  # the same window: spent
    assert budget.counts(9.9) == (10, 5)
    assert budget.counts(11.0) == (0, 0)  # second 0 has left the window
    for _ in range(4):
        budget.request(11.0)
    assert sum(budget.try_retry(11.0) for _ in range(10)) == 2


def test_long_streams_in_flight_count_as_requests_seen() -> None:
    """1,000 streams opened a minute ago: the window saw none arrive, yet they are the load."""
    budget = RetryBudget(Settings(ratio=0.2, min_retries=3, window_s=10))
    assert sum(budget.try_retry(60.0, in_flight=1000) for _ in range(500)) == 200
    assert sum(budget.try_retry(61.0, in_flight=0) for _ in range(10)) == 0  # spent
