"""A loopback TCP relay in front of one vLLM server that holds a stream back at a chosen event.

A real vLLM on CPU can finish a 160-token answer before the client has read twenty chunks of it,
so "SIGKILL the server mid-stream" raced the generation. The valve makes the cut deterministic:
it passes every connection through untouched, except that the response to a streamed
``POST /v1/chat/completions`` is forwarded only up to the end of its ``hold_after``-th SSE event;
the bytes after it stay in the valve. When the server goes away (the test SIGKILLs it), the valve
aborts the gateway's connection and the held bytes are lost, as bytes in flight are when a server
dies: the gateway sees a stream cut after exactly ``hold_after`` events.

Runs an asyncio loop in a daemon thread; ``close`` stops it (bounded wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from quantroute.testing.procs import free_port

__all__ = ["StreamValve"]

_GATED = b"POST /v1/chat/completions"


class _Gate:
    """One connection's state: armed by a streamed chat request, holding once it hit its cut."""

    def __init__(self) -> None:
        self.armed = False
        self.holding = False
        self.events = 0


class StreamValve:
    """Relay ``127.0.0.1:<port>`` to ``upstream_port``; hold streamed chat answers after N events."""

    def __init__(self, upstream_port: int, hold_after: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.held = threading.Event()  # set once a gated stream reached its hold point
        self._upstream_port = upstream_port
        self._hold_after = hold_after
        self._loop = asyncio.new_event_loop()
        self._transports: set[asyncio.WriteTransport] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-valve", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("stream valve did not start within 10 s")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for transport in self._transports:  # connections still open: closed, not leaked
                transport.abort()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._transports |= {writer.transport, up_writer.transport}
        gate = _Gate()  # the gateway's pool may reuse a connection: gate per request, not socket
        forward = asyncio.create_task(self._requests(reader, up_writer, gate))
        try:
            await self._answers(up_reader, writer, gate)
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward
            up_writer.transport.abort()
            writer.transport.abort()
            self._transports -= {writer.transport, up_writer.transport}

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: _Gate
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if data.startswith(_GATED) and b'"stream":true' in data.replace(b" ", b""):
                    gate.armed = True
                writer.write(data)
                await writer.drain()
            writer.write_eof()

    async def _answers(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: _Gate
    ) -> None:
        try:
            while data := await up_reader.read(65536):
                if gate.holding:
                    continue  # held: these bytes never reach the gateway
                if gate.armed:
                    cut = 0
                    while gate.events < self._hold_after:
                        end = data.find(b"\n\n", cut)
                        if end < 0:
                            break
                        cut = end + 2
                        gate.events += 1
                    if gate.events >= self._hold_after:
                        data, gate.holding = data[:cut], True
                        self.held.set()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        if gate.holding:
            writer.transport.abort()  # the server died with the rest of the stream in flight
        else:
            with contextlib.suppress(OSError):
                writer.write_eof()
                await writer.drain()
            writer.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
