"""The retry budget: retries at most a share of the requests seen over a sliding window.

After Envoy's retry budget: when a whole fleet fails, retrying every request would double the
load on it exactly when it can least take it. ``ratio`` of the requests seen over the last
``window_s`` may be retried, and at least ``min_retries`` in that window, so a lone failure is
still retried on a quiet gateway. "Requests seen" is the larger of those that arrived in the
window and those in flight now: LLM streams last long, so a burst of 1,000 open streams that
arrived a minute ago still counts (Envoy counts active requests for the same reason).
Pure: time is passed in. Counts live in one-second buckets.
"""

from __future__ import annotations

import math
from collections import deque

from quantroute.resilience.settings import RetryBudget as RetryBudgetSettings


class RetryBudget:
    def __init__(self, settings: RetryBudgetSettings) -> None:
        self.settings = settings
        self._buckets: deque[list[int]] = deque()
        """[second, requests, retries], oldest first."""

    def configure(self, settings: RetryBudgetSettings) -> None:
        self.settings = settings

    def _bucket(self, now: float) -> list[int]:
        second = math.floor(now)
        horizon = second - math.ceil(self.settings.window_s)
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def request(self, now: float) -> None:
        """A request arrived (count each client request once, not each attempt)."""
        self._bucket(now)[1] += 1

    def try_retry(self, now: float, in_flight: int = 0) -> bool:
        """True (and the retry is counted) when the budget has room for one more retry."""
        current = self._bucket(now)
        requests = max(in_flight, sum(b[1] for b in self._buckets))
        retries = sum(b[2] for b in self._buckets)
        allowed = max(self.settings.min_retries, math.floor(self.settings.ratio * requests))
        if retries >= allowed:
            return False
        current[2] += 1
        return True

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, retries) in the window ending at ``now``."""
        self._bucket(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)
