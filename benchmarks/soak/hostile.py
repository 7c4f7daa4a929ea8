"""Hostile clients for the soak: slow-header connections and never-ending uploads.

    python hostile.py --url http://127.0.0.1:8080 --slow-headers 50 --uploads 10 --duration 60

Each slow-header client opens a connection and sends a request's headers one byte per second;
each uploader sends a chunked body without end at ``--upload-rate`` bytes/s. Whenever the gateway
cuts one (408, 413, or a closed connection) it starts again, so the pressure holds for the whole
run. Writes a JSON summary: connections opened, answers by status, bytes uploaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import uvloop

HEADERS = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
    b"x-padding: " + b"p" * 200 + b"\r\n"
)


class Tally:
    def __init__(self) -> None:
        self.opened = Counter[str]()
        self.answers = Counter[str]()
        self.uploaded = 0


async def _status(reader: asyncio.StreamReader) -> str:
    try:
        line = await asyncio.wait_for(reader.readline(), 1.0)
    except (TimeoutError, ConnectionError):
        return "closed"
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 else "closed"


async def slow_headers(host: str, port: int, stop_at: float, tally: Tally) -> None:
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        tally.opened["slow_headers"] += 1
        try:
            for byte in HEADERS:
                if reader.at_eof() or writer.is_closing() or time.monotonic() >= stop_at:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1), 1.0)
                    break  # the gateway answered (408): start over
                except TimeoutError:
                    continue
        except (ConnectionError, RuntimeError):
            pass
        tally.answers[f"slow_headers:{await _status(reader)}"] += 1
        writer.close()


async def endless_upload(host: str, port: int, stop_at: float, rate: int, tally: Tally) -> None:
    piece = b"x" * (rate // 10)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        tally.opened["upload"] += 1
        try:
            writer.write(HEADERS + b"transfer-encoding: chunked\r\n\r\n")
            while time.monotonic() < stop_at and not reader.at_eof() and not writer.is_closing():
                writer.write(frame)
                await writer.drain()
                tally.uploaded += len(piece)
                await asyncio.sleep(0.1)
        except (ConnectionError, RuntimeError):  # the gateway closed it (413) under our write
            pass
        tally.answers[f"upload:{await _status(reader)}"] += 1
        writer.close()


async def run(url: str, n_slow: int, n_upload: int, duration_s: float, rate: int) -> Tally:
    host, port = url.removeprefix("http://").split(":")
    stop_at = time.monotonic() + duration_s
    tally = Tally()
    await asyncio.gather(
        *(slow_headers(host, int(port), stop_at, tally) for _ in range(n_slow)),
        *(endless_upload(host, int(port), stop_at, rate, tally) for _ in range(n_upload)),
    )
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--slow-headers", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--upload-rate", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tally = uvloop.run(
        run(args.url, args.slow_headers, args.uploads, args.duration, args.upload_rate)
    )
    with open(args.out, "w") as f:
        json.dump(
            {"opened": tally.opened, "answers": tally.answers, "uploaded_bytes": tally.uploaded},
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
