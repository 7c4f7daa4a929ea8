"""The ceiling baseline: a minimal FastAPI + uvicorn + aiohttp pass-through proxy.

No routing, no metrics, no parsing: the body goes as it is to the next backend (round robin),
the answer comes back as it is (streams chunk by chunk as aiohttp reads them). Built from the
same parts as quantroute (FastAPI, uvicorn with uvloop and httptools, one aiohttp session), so
the gateway's figure against this one is the price of what quantroute does per request, not of
its frameworks::

    python bare_proxy.py --port 8200 --backends http://127.0.0.1:8101 http://127.0.0.1:8102

Answers ``GET /ready`` once its session is open.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

PATH = "/v1/chat/completions"


def create_app(backends: list[str]) -> FastAPI:
    state: dict[str, aiohttp.ClientSession] = {}
    turn = itertools.cycle(backends)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            state["session"] = session
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": "session" in state}

    @app.post(PATH)
    async def chat(request: Request) -> Response:
        body = await request.body()
        upstream = await state["session"].post(
            next(turn) + PATH, data=body, headers={"Content-Type": "application/json"}
        )
        ctype = upstream.headers.get("Content-Type", "application/json")
        if not ctype.startswith("text/event-stream"):
            async with upstream:
                return Response(await upstream.read(), upstream.status, media_type=ctype)

        async def relay() -> AsyncIterator[bytes]:
            async with upstream:  # closed however the stream ends (client gone: aborted)
                async for chunk in upstream.content.iter_any():
                    yield chunk

        return StreamingResponse(relay(), upstream.status, media_type=ctype)

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backends", nargs="+", required=True)
    a = p.parse_args(argv)
    uvicorn.run(
        create_app(a.backends),
        host="127.0.0.1",
        port=a.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
