"""Before the load: byte-for-byte relay checks and the expected size of every response."""

from __future__ import annotations

from typing import Any

import loadgen
from fleet import Fleet

CASES = {
    "stream, client sets include_usage": (True, True),
    "stream, no include_usage (gateway adds and strips it)": (True, False),
    "non-stream": (False, False),
}


async def verify(f: Fleet, prompt_chars: int = 0) -> dict[str, Any]:
    """Direct vs through each gateway: status, content type and body must be identical. A
    baseline is held to its status and body only (the Rust router answers a stream as
    ``text/event-stream`` without the backend's ``; charset=utf-8``: its own choice, not a
    broken relay); ``content_type`` records both."""
    checks: dict[str, Any] = {}
    async with loadgen.new_session(2) as session:
        for name, (stream, usage) in CASES.items():
            body = loadgen.payload(
                f.direct.model, stream, include_usage=usage, prompt_chars=prompt_chars
            )
            direct = await loadgen.fetch(session, f.direct.chat_url, body)
            for gw in f.gateways:
                body = loadgen.payload(
                    gw.target.model, stream, include_usage=usage, prompt_chars=prompt_chars
                )
                routed = await loadgen.fetch(session, gw.target.chat_url, body)
                label = name if gw.target.name == "gateway" else f"{gw.target.name}: {name}"
                checks[label] = {
                    "equal": direct == routed
                    or (gw.baseline and (direct[0], direct[2]) == (routed[0], routed[2])),
                    "content_type": [direct[1], routed[1]],
                    "status": [direct[0], routed[0]],
                    "bytes": [len(direct[2]), len(routed[2])],
                    "events": direct[2].count(b"\n\n") if stream else None,
                }
    return checks


async def expected_sizes(f: Fleet, prompt_chars: int = 0) -> dict[tuple[str, bool], int]:
    """Body size per (target, stream): the load generator counts a shorter body as an error."""
    sizes: dict[tuple[str, bool], int] = {}
    async with loadgen.new_session(1) as session:
        for target in f.targets:
            for stream in (False, True):
                body = loadgen.payload(target.model, stream, prompt_chars=prompt_chars)
                status, _, data = await loadgen.fetch(session, target.chat_url, body)
                if status != 200:
                    raise RuntimeError(f"{target.name} answered {status}: {data[:300]!r}")
                sizes[target.name, stream] = len(data)
    return sizes
