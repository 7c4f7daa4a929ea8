"""One simulated vLLM backend for the soak, in its own process (so it can be killed).

    python backend.py --id b1 --port 8201 --kind sim --time-scale 0.03
    python backend.py --id b1 --port 8201 --kind fake --token-interval 0.5

``--kind sim`` serves :mod:`quantroute.sim` (profile ``llama3-8b-fp16`` unless ``--profile``):
a full engine per backend, which on a small shared machine cannot carry 1,000 streams beside the
gateway. ``--kind fake`` serves :class:`~quantroute.testing.fake_backend.FakeBackend` (vLLM's SSE
framing and metric names, one token every ``--token-interval`` seconds, no engine). Either sits
behind a fault switch: ``POST /_soak/fault?mode=500`` makes every generation request answer HTTP 500 at once
while ``/metrics`` stays healthy (the backend that looks idle because it fails fast);
``mode=ok`` undoes it. The gateway never calls ``/_soak/``. Prints ``READY`` when listening.
"""

from __future__ import annotations

import argparse
import json
import socket

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from quantroute.sim.fleet import SimBackendSpec, build_backend, default_answer_key
from quantroute.sim.server import create_app

ERROR = json.dumps(
    {
        "error": {
            "message": "injected failure",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
).encode()


class FaultSwitch:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.mode = "ok"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path == "/_soak/fault":
            query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
            self.mode = query.get("mode", self.mode)
            await _answer(send, 200, json.dumps({"mode": self.mode}).encode())
            return
        if (
            scope["type"] == "http"
            and self.mode == "500"
            and path.startswith("/v1/")
            and (scope["method"] == "POST")
        ):
            await _answer(send, 500, ERROR)
            return
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run_fake(args: argparse.Namespace) -> None:
    import asyncio

    from aiohttp import web

    from quantroute.testing.fake_backend import FakeBackend, FakeState

    state = FakeState(
        served_model_name=args.served_model_name,
        chunk_delay_s=args.token_interval,
        kv_usage=0.1,
        num_gpu_blocks=1_000_000,
    )
    fake = FakeBackend(state)

    async def fault(request: web.Request) -> web.Response:
        mode = request.query.get("mode", "ok")
        state.fail_status, state.fail_times = (500, -1) if mode == "500" else (None, 0)
        return web.json_response({"mode": mode})

    async def clear_received() -> None:
        while True:  # the fake records every body; keep memory flat over a long run
            await asyncio.sleep(1.0)
            state.received.clear()

    async def serve() -> None:
        fake.app.router.add_post("/_soak/fault", fault)
        runner = web.AppRunner(fake.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=2048).start()
        print("READY", flush=True)
        await clear_received()

    import uvloop

    uvloop.run(serve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", default="llama3-8b-fp16")
    parser.add_argument("--served-model-name", default="soak-model")
    parser.add_argument("--max-num-seqs", type=int, default=1024)
    parser.add_argument("--time-scale", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("sim", "fake"), default="sim")
    parser.add_argument("--token-interval", type=float, default=0.5)
    args = parser.parse_args()
    if args.kind == "fake":
        run_fake(args)
        return 0
    spec = SimBackendSpec(
        id=args.id,
        profile=args.profile,
        port=args.port,
        served_model_name=args.served_model_name,
        max_num_seqs=args.max_num_seqs,
    )
    backend = build_backend(
        spec, time_scale=args.time_scale, seed=args.seed, answer_key=default_answer_key()
    )
    app = FaultSwitch(create_app(backend))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=1,
        backlog=2048,
    )
    ReadyServer(config).run()
    return 0


class ReadyServer(uvicorn.Server):
    """Says READY on stdout once it listens (the harness waits for that line)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        print("READY", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
