"""Typed settings of flow control (``policy.flow_control`` and a group's ``on_saturation``).

Frozen and closed to unknown keys, like the rest of the config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from quantroute.base import FrozenModel

OnSaturation = Literal["queue", "downgrade", "reject"]
"""What a request gets when every backend that could serve it is saturated (KV cache at the
hard ceiling, or vLLM's waiting queue over the ``waiting`` filter's limit):

* ``queue``: it waits in the gateway, by priority, until a backend has room (or a bound is hit);
* ``downgrade``: an interactive request goes to the best variant of its group below the quality
  floor that has room (marked ``x-quantroute-downgraded``); without one, or for batch, it queues;
* ``reject``: 503 with ``Retry-After`` at once (the behaviour before flow control).
"""


class FlowControlConfig(FrozenModel):
    """The gateway-side queue per group (or per model name outside groups)."""

    on_saturation: OnSaturation = "queue"
    """The default of every group (a group's own ``on_saturation`` wins)."""
    max_queue_length: int = Field(default=1000, ge=1)
    """Requests waiting per group. When it is full, a request that outranks the lowest queued
    one takes its place (that one is answered ``queue_full``); otherwise it is answered at once."""
    max_wait_s: Annotated[float, Field(gt=0.0)] = 30.0
    """The longest a request waits for room; then it is answered ``queue_timeout``."""
    reject_status: Literal[429, 503] = 503
    """The HTTP status of ``queue_full`` and ``queue_timeout`` (both with ``Retry-After``)."""
    retry_after_s: int = Field(default=1, ge=1)
    """``Retry-After`` of those answers."""
