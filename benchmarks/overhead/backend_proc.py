"""Fast fake vLLM backends for the overhead benchmark: N aiohttp apps in one uvloop process.

Run by ``run.py`` pinned to core 0::

    python backend_proc.py --model fake-model --ports 8101 8102

Prints ``READY`` once every port listens; exits on SIGTERM/SIGINT. Each port is its own
:class:`~quantroute.testing.fake_backend.FakeBackend` (own state, own ``/metrics``). The fake records
every body it receives; that list is cleared every second so memory stays flat under load.
SIGUSR1 toggles slow streams (``SLOW_CHUNK_S`` before each event) for the open-streams phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import uvloop
from aiohttp import web

from quantroute.testing.fake_backend import FakeBackend, FakeState

CLEAR_EVERY_S = 1.0
SLOW_CHUNK_S = 0.25


def make_state(model: str) -> FakeState:
    """A healthy backend: some KV in use, large cache, nothing waiting."""
    return FakeState(served_model_name=model, kv_usage=0.2, num_gpu_blocks=20000, block_size=16)


async def _serve(model: str, ports: list[int]) -> None:
    backends = [FakeBackend(make_state(model)) for _ in ports]
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def toggle_slow() -> None:
        for backend in backends:
            slow = backend.state.chunk_delay_s
            backend.state.chunk_delay_s = 0.0 if slow else SLOW_CHUNK_S

    loop.add_signal_handler(signal.SIGUSR1, toggle_slow)
    try:
        for backend, port in zip(backends, ports, strict=True):
            runner = web.AppRunner(backend.app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        print("READY", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CLEAR_EVERY_S)
            for backend in backends:
                backend.state.received.clear()
    finally:
        for runner in runners:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ports", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.model, args.ports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
