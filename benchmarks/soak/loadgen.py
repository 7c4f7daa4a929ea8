"""Closed-loop streaming load for the soak: keep N chat streams open through the gateway.

    python loadgen.py --url http://127.0.0.1:8080 --streams 1000 --duration 60 --out load.json

Every stream is checked frame by frame: each SSE event must be ``data: <JSON object>``,
``data: [DONE]`` or a comment (lines starting with ``:``, which SSE clients ignore; the gateway's
``: quantroute continued on <backend>`` marks a stream continued elsewhere), and a complete
stream ends with ``[DONE]``. Per request it records the status,
start (seconds after ``t0_monotonic``, written in the summary), time to first byte, duration,
the backend that answered (``x-quantroute-backend``), whether it
failed before its first byte (a status other than 200, or a connection error), whether it ended
with an error event after starting, and malformed frames. Writes a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import aiohttp
import uvloop


@dataclass
class Record:
    started: float
    status: int = 0
    ttfb_s: float | None = None
    duration_s: float = 0.0
    backend: str = ""
    error: str = ""
    before_first_byte: bool = False
    error_event: bool = False
    malformed: int = 0
    done: bool = False
    continued: bool = False


@dataclass
class Summary:
    records: list[Record] = field(default_factory=list)


def check_events(buffer: bytes, record: Record) -> bytes:
    """Validate every complete event in ``buffer``; return the incomplete tail."""
    *events, tail = buffer.split(b"\n\n")
    for event in events:
        if all(line.startswith(b":") for line in event.split(b"\n")):
            # an SSE comment (valid, ignored by clients): the gateway marks a continuation so
            record.continued = record.continued or b"continued on" in event
            continue
        if not event.startswith(b"data: "):
            record.malformed += 1
            continue
        payload = event[6:]
        if payload == b"[DONE]":
            record.done = True
            continue
        try:
            obj = json.loads(payload)
        except ValueError:
            record.malformed += 1
            continue
        if not isinstance(obj, dict):
            record.malformed += 1
        elif "error" in obj:
            record.error_event = True
    return tail


async def one(session: aiohttp.ClientSession, url: str, body: bytes, t0: float) -> Record:
    record = Record(started=time.monotonic() - t0)
    start = time.monotonic()
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            record.status = r.status
            record.backend = r.headers.get("x-quantroute-backend", "")
            if r.status != 200:
                record.before_first_byte = True
                record.error = (await r.read())[:200].decode(errors="replace")
                return record
            buffer = b""
            async for chunk in r.content.iter_any():
                if record.ttfb_s is None:
                    record.ttfb_s = time.monotonic() - start
                buffer = check_events(buffer + chunk, record)
            if buffer.strip():
                record.malformed += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:200]
        record.before_first_byte = record.ttfb_s is None
    finally:
        record.duration_s = time.monotonic() - start
    return record


async def run(
    url: str, streams: int, duration_s: float, max_tokens: int, t0: float
) -> list[Record]:
    body = json.dumps(
        {
            "model": "auto",
            "messages": [{"role": "user", "content": "Tell me a story about a lighthouse."}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    records: list[Record] = []
    stop_at = t0 + duration_s
    connector = aiohttp.TCPConnector(limit=streams + 8, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(i: int) -> None:
            await asyncio.sleep(i * 0.002)  # ramp over ~2 s, not one thundering herd
            while time.monotonic() < stop_at:
                records.append(await one(session, url + "/v1/chat/completions", body, t0))

        await asyncio.gather(*(worker(i) for i in range(streams)))
    return records


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(records: list[Record]) -> dict[str, object]:
    ok = [r for r in records if r.status == 200 and r.done and not r.error_event]
    ttfb = [r.ttfb_s for r in records if r.ttfb_s is not None]
    return {
        "requests": len(records),
        "completed": len(ok),
        "errors_before_first_byte": sum(r.before_first_byte for r in records),
        "ended_by_error_event": sum(r.error_event for r in records),
        "cut_without_error_event": sum(
            1 for r in records if r.status == 200 and not r.done and not r.error_event
        ),
        "malformed_frames": sum(r.malformed for r in records),
        "continued_on_another_backend": sum(1 for r in records if r.continued and r.done),
        "statuses": dict(Counter(str(r.status) for r in records)),
        "backends": dict(Counter(r.backend for r in records)),
        "ttfb_p50_s": percentile(ttfb, 0.5),
        "ttfb_p99_s": percentile(ttfb, 0.99),
        "duration_p50_s": percentile([r.duration_s for r in ok], 0.5),
        "duration_p99_s": percentile([r.duration_s for r in ok], 0.99),
        "errors_sample": [r.error for r in records if r.error][:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--out", required=True)
    parser.add_argument("--records", help="also write every record (JSON lines) here")
    args = parser.parse_args()
    t0 = time.monotonic()
    records = uvloop.run(run(args.url, args.streams, args.duration, args.max_tokens, t0))
    with open(args.out, "w") as f:
        # CLOCK_MONOTONIC is one clock for every process of the machine: the harness places
        # its fault events on the records' time line with it
        json.dump({**summarise(records), "t0_monotonic": t0}, f, indent=2)
    if args.records:
        with open(args.records, "w") as f:
            for r in records:
                f.write(json.dumps(asdict(r)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
