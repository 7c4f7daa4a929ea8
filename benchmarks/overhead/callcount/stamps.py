"""Installed by ``sitecustomize`` at start-up in any process whose PYTHONPATH leads with this
directory and whose ``$QR_PATHSTAMP`` names a directory: a uvicorn (httptools) + aiohttp proxy
stamps six points of every request, the same way in the gateway and in the bare proxy:

- R: the start of the read that brought the request's first byte (uvicorn's ``data_received``);
- A: uvicorn's ``on_message_begin`` (the request's first byte parsed);
- B: the call of aiohttp's ``ClientSession._request`` for the upstream POST;
- C: its return (the backend's status and headers in);
- D: the return of uvicorn's ``send`` of the answer's last body message;
- E: the end of the request's task (uvicorn's ``run_asgi``): what the app does after the answer
  is sent (the gateway's accounting) lies between D and E.

Every 2,000 requests, and at exit, the stamps go to ``$QR_PATHSTAMP/<program>-<pid>.json``
(``perf_counter_ns`` values). ``pathstamp.py`` reads them. Sequential requests only: the
stamps of the request in progress are kept in one slot.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from typing import Any

RECORDS: list[list[tuple[str, int]]] = []


def _dump(directory: str) -> None:
    name = f"{os.path.basename(sys.argv[0])}-{os.getpid()}.json"
    with open(os.path.join(directory, name), "w") as out:
        json.dump(RECORDS, out)


def install(directory: str) -> None:
    import aiohttp
    import uvicorn.protocols.http.httptools_impl as impl

    now = time.perf_counter_ns
    current: list[list[tuple[str, int]] | None] = [None]
    begin, request, send = (
        impl.HttpToolsProtocol.on_message_begin,
        aiohttp.ClientSession._request,
        impl.RequestResponseCycle.send,
    )
    received, run_asgi = impl.HttpToolsProtocol.data_received, impl.RequestResponseCycle.run_asgi
    read_at = [0]

    def data_received(self: impl.HttpToolsProtocol, data: bytes) -> None:
        read_at[0] = now()
        received(self, data)

    async def stamped_run_asgi(self: impl.RequestResponseCycle, app: Any) -> None:
        record = current[0]  # this request's: the task starts after its on_message_begin
        await run_asgi(self, app)
        if record is not None:
            record.append(("E", now()))

    def on_message_begin(self: impl.HttpToolsProtocol) -> None:
        record = [("R", read_at[0]), ("A", now())]
        RECORDS.append(record)
        current[0] = record
        if len(RECORDS) % 2000 == 0:  # the bare proxy is stopped by a signal: no atexit
            _dump(directory)
        begin(self)

    async def stamped_request(
        self: aiohttp.ClientSession, method: str, url: Any, *args: Any, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        record = current[0] if method == "POST" else None
        if record is not None:
            record.append(("B", now()))
        response = await request(self, method, url, *args, **kwargs)
        if record is not None:
            record.append(("C", now()))
        return response

    async def stamped_send(self: impl.RequestResponseCycle, message: Any) -> None:
        await send(self, message)
        record = current[0]
        last = message.get("type") == "http.response.body" and not message.get("more_body")
        if record is not None and last:
            record.append(("D", now()))

    impl.HttpToolsProtocol.on_message_begin = on_message_begin  # type: ignore[method-assign]
    aiohttp.ClientSession._request = stamped_request  # type: ignore[method-assign,assignment]
    impl.RequestResponseCycle.send = stamped_send  # type: ignore[method-assign]
    impl.HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]
    impl.RequestResponseCycle.run_asgi = stamped_run_asgi  # type: ignore[method-assign]
    atexit.register(_dump, directory)
