"""A fault switch for simulated backends: break streams the way a dying vLLM server does.

Set over HTTP on the backend itself (``PUT /sim/fault`` with a :class:`StreamFault` body,
``DELETE /sim/fault`` to clear), so tests and benchmarks can break one backend of a running
fleet. The fault strikes the next ``times`` streams when ``after_content_chunks`` content chunks
have been sent (0: right after the role chunk, before any text):

- ``reset``: the connection is dropped without the end of the chunked body (a crashed or
  OOM-killed server, a lost node);
- ``close``: the body ends cleanly but without the finish chunk and ``data: [DONE]``;
- ``error_event``: vLLM's own mid-stream error event, then ``data: [DONE]`` (an engine error);
- ``stall``: nothing more is sent for ``stall_s`` seconds (a hung engine: the gateway's read
  timeout between chunks fires), then the connection is dropped.

``GET /sim/requests`` lists the request bodies the backend received (the last ones it keeps,
``backend.received``), so a test can assert what a continuation carried.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from pydantic import Field

from quantroute.base import FrozenModel
from quantroute.sim import wire

FaultMode = Literal["reset", "close", "error_event", "stall"]


class StreamBrokenByFault(Exception):
    """Raised inside a streaming body: the server drops the connection mid-response."""


class StreamFault(FrozenModel):
    mode: FaultMode = "reset"
    after_content_chunks: int = Field(default=0, ge=0)
    times: int = Field(default=1, ge=-1)
    """How many streams it strikes (-1: every one until cleared)."""
    stall_s: float = Field(default=30.0, gt=0)


class FaultSwitch:
    """The armed fault of one backend."""

    def __init__(self) -> None:
        self.fault: StreamFault | None = None
        self._left = 0

    def arm(self, fault: StreamFault | None) -> None:
        self.fault = fault
        self._left = fault.times if fault is not None else 0

    def take(self) -> StreamFault | None:
        """The fault for the stream starting now (uses one of its ``times``)."""
        if self.fault is None or self._left == 0:
            return None
        if self._left > 0:
            self._left -= 1
        return self.fault


async def strike(fault: StreamFault) -> list[str]:
    """Break the stream: the events still to send (``close``/``error_event``), or raise."""
    if fault.mode == "close":
        return []
    if fault.mode == "error_event":
        body = wire.error_body("injected engine failure", "InternalServerError", 500)
        return [f"data: {json.dumps(body)}\n\n", wire.SSE_DONE]
    if fault.mode == "stall":
        await asyncio.sleep(fault.stall_s)
    raise StreamBrokenByFault(f"injected {fault.mode}")
