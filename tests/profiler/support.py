"""Helpers for profiler tests: the simulated fleet on free loopback ports, and broken backends."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from quantroute.config import GatewayConfig, TaskType, parse_config
from quantroute.sim.fleet import SimFleet, load_fleet_config
from quantroute.sim.profiles import load_profiles
from quantroute.workloads import Sample, grade

# Prices per GPU hour used in these tests (H100 as in our users' write-up; L40S an on-demand
# cloud price of the same period). Only their ratio matters to the orderings tested.
PRICES = {"l40s-48gb": 1.80, "h100-sxm-80gb": 4.50}
L40S = ("llama3-8b-awq", "qwen25-7b-gptq")
H100 = ("llama3-70b-awq", "llama3-8b-fp16")


def backend_row(variant: str, url: str) -> dict[str, Any]:
    """A gateway backend entry for a simulated variant (backend id = variant = served name)."""
    profile = load_profiles().variant(variant)
    return {
        "id": variant,
        "url": url,
        "served_model_name": variant,
        "max_seq_len": profile.max_model_len,
        "capacity": profile.max_num_seqs,
        "gpu": profile.gpu,
        "gpu_cost_per_hour": PRICES[profile.gpu],
    }


@dataclass
class Fleet:
    sim: SimFleet
    time_scale: float

    def rows(self) -> list[dict[str, Any]]:
        return [backend_row(bid, url) for bid, url in self.sim.urls.items()]

    def gateway_config(self, *extra: dict[str, Any], **top: Any) -> GatewayConfig:
        return parse_config({"backends": [*self.rows(), *extra], **top})

    def expected_passes(self, variant: str, samples: list[Sample]) -> dict[TaskType, int]:
        """What the simulator's oracle answers, graded: the pass counts a profiler must find."""
        oracle = self.sim.backends[variant].oracle
        passes: dict[TaskType, int] = {}
        for sample in samples:
            answer = oracle.answer(sample.last_user_text)
            ok = answer is not None and grade(sample.check, answer).passed
            passes[sample.task] = passes.get(sample.task, 0) + ok
        return passes


@contextlib.asynccontextmanager
async def running_fleet(time_scale: float, only: tuple[str, ...] = ()) -> AsyncIterator[Fleet]:
    """The packaged default fleet (or some of its backends) on free ports at ``time_scale``."""
    config = load_fleet_config()
    backends = [
        b.model_copy(update={"port": 0}) for b in config.backends if not only or b.id in only
    ]
    config = config.model_copy(update={"time_scale": time_scale, "backends": backends})
    async with SimFleet(config) as sim:
        yield Fleet(sim, time_scale)


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await reader.readexactly(length)


@contextlib.asynccontextmanager
async def scripted_server(status: int, content_type: str, body: bytes) -> AsyncIterator[str]:
    """A tiny HTTP/1.1 server answering every request with one fixed response; yields its URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _read_request(reader)
            head = (
                f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


ERROR_500 = b'{"error": {"message": "engine dead", "type": "InternalServerError", "code": 500}}'
STREAM_WITHOUT_USAGE = (
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"Answer: 1"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
