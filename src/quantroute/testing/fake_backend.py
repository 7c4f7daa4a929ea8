"""A small, fast, controllable vLLM-like server (aiohttp) for narrow gateway tests and benchmarks.

It speaks the OpenAI API the way vLLM frames it and exports vLLM-format ``/metrics`` whose values
the test sets. Knobs inject faults: fail with a status, delay headers, delay each chunk. It records
what it received and how many responses were cut short by the client going away. For realistic
behaviour under load use :mod:`quantroute.sim` instead.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from quantroute.errors import openai_error_body

_CREATED = 1795474388


@dataclass
class FakeState:
    served_model_name: str = "fake-model"
    max_model_len: int = 8192
    kv_usage: float | None = 0.0
    running: float = 0.0
    waiting: float = 0.0
    num_gpu_blocks: int | None = 1000
    block_size: int = 16
    legacy_kv_name: bool = False
    fail_status: int | None = None
    fail_times: int = 0
    metrics_status: int = 200
    header_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    default_tokens: int = 16
    die_after_chunks: int | None = None
    gate: threading.Event | None = None
    """Hold every answer until this is set (bounded by GATE_LIMIT_S): lets a test put a whole
    burst in flight at once, so which backend each request got does not depend on timing."""
    drop_requests: bool = False
    """Close the connection on every API request without answering (a backend whose /metrics
    still answers but whose engine is gone): the gateway sees a connect-class error."""
    linger: threading.Event | None = None
    """Keep a stream's connection open after ``data: [DONE]`` until this is set (bounded by
    GATE_LIMIT_S): the client has the whole answer before the backend's connection ends."""
    received: list[dict[str, Any]] = field(default_factory=list)
    received_headers: list[dict[str, str]] = field(default_factory=list)
    aborted: int = 0
    completed: int = 0
    active: int = 0


def metrics_text(s: FakeState) -> str:
    labels = f'engine="0",model_name="{s.served_model_name}"'
    kv_name = "vllm:gpu_cache_usage_perc" if s.legacy_kv_name else "vllm:kv_cache_usage_perc"
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {s.running + s.active}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} {s.waiting}",
    ]
    if s.kv_usage is not None:
        lines += [
            f"# HELP {kv_name} KV-cache usage.",
            f"# TYPE {kv_name} gauge",
            f"{kv_name}{{{labels}}} {s.kv_usage}",
        ]
    if s.num_gpu_blocks is not None:
        info = f'block_size="{s.block_size}",engine="0",num_gpu_blocks="{s.num_gpu_blocks}"'
        lines += [
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
            "# TYPE vllm:cache_config_info gauge",
            f"vllm:cache_config_info{{{info}}} 1.0",
        ]
    return "\n".join(lines) + "\n"


def _chunk(model: str, kind: str, content: str | None, finish: str | None) -> bytes:
    if kind == "chat":
        delta = {"content": content} if content is not None else {}
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    body = {
        "id": "cmpl-fake",
        "object": obj,
        "created": _CREATED,
        "model": model,
        "choices": [choice],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


GATE_LIMIT_S = 30.0


async def _wait_gate(gate: threading.Event) -> None:
    if not gate.is_set():
        await asyncio.to_thread(gate.wait, GATE_LIMIT_S)


class FakeBackend:
    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completion)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/metrics", self._metrics)

    async def _metrics(self, _: web.Request) -> web.Response:
        if self.state.metrics_status != 200:
            return web.Response(status=self.state.metrics_status)
        return web.Response(text=metrics_text(self.state), content_type="text/plain")

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, _: web.Request) -> web.Response:
        s = self.state
        model = {"id": s.served_model_name, "object": "model", "max_model_len": s.max_model_len}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "chat")

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "text")

    async def _answer(self, request: web.Request, kind: str) -> web.StreamResponse:
        s = self.state
        body = await request.json()
        s.received.append(body)
        s.received_headers.append({k.lower(): v for k, v in request.headers.items()})
        if s.drop_requests and request.transport is not None:
            request.transport.abort()
            raise ConnectionResetError("dropped by the fake backend")
        if s.fail_status is not None and s.fail_times != 0:
            s.fail_times -= 1
            error = openai_error_body("injected failure", "InternalServerError", code=s.fail_status)
            return web.json_response(error, status=s.fail_status)
        if body.get("model") != s.served_model_name:
            message = f"The model `{body.get('model')}` does not exist."
            error = openai_error_body(message, "NotFoundError", param="model", code=404)
            return web.json_response(error, status=404)
        if s.gate is not None:
            await _wait_gate(s.gate)
        if s.header_delay_s:
            try:
                await asyncio.sleep(s.header_delay_s)
            except asyncio.CancelledError:
                s.aborted += 1
                raise
        tokens = int(body.get("max_tokens") or s.default_tokens)
        s.active += 1
        try:
            if body.get("stream"):
                return await self._stream(request, body, kind, tokens)
            if s.chunk_delay_s:
                await asyncio.sleep(s.chunk_delay_s * tokens)
            return self._whole(body, kind, tokens)
        except asyncio.CancelledError:
            s.aborted += 1
            raise
        finally:
            s.active -= 1

    def _whole(self, body: dict[str, Any], kind: str, tokens: int) -> web.Response:
        text = " tok" * tokens
        if kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
        usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}
        obj = "chat.completion" if kind == "chat" else "text_completion"
        self.state.completed += 1
        return web.json_response(
            {
                "id": "cmpl-fake",
                "object": obj,
                "created": _CREATED,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], kind: str, tokens: int
    ) -> web.StreamResponse:
        model = body["model"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        try:
            if kind == "chat":
                first = json.dumps(
                    {
                        "id": "cmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": _CREATED,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    },
                    separators=(",", ":"),
                )
                await response.write(b"data: " + first.encode() + b"\n\n")
            for i in range(tokens):
                if self.state.die_after_chunks is not None and i == self.state.die_after_chunks:
                    assert request.transport is not None
                    request.transport.close()  # the server dies mid-stream
                    return response
                if self.state.chunk_delay_s:
                    await asyncio.sleep(self.state.chunk_delay_s)
                await response.write(
                    _chunk(model, kind, " tok", "length" if i == tokens - 1 else None)
                )
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": 10,
                    "completion_tokens": tokens,
                    "total_tokens": 10 + tokens,
                }
                obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
                final = {
                    "id": "cmpl-fake",
                    "object": obj,
                    "created": _CREATED,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await response.write(
                    b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n"
                )
            await response.write(b"data: [DONE]\n\n")
            if self.state.linger is not None:
                await asyncio.to_thread(self.state.linger.wait, GATE_LIMIT_S)
            await response.write_eof()
        except ConnectionResetError:
            self.state.aborted += 1
            raise
        self.state.completed += 1
        return response


class ThreadedServer:
    """Run an aiohttp application on 127.0.0.1 (or another loopback address such as 127.0.0.2)
    in a background thread with its own loop."""

    def __init__(
        self, app: web.Application, port: int | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.app = app
        self.host = host
        # Bound here, handed to the site: no window in which another process takes the port
        # (a port taken on this address raises OSError here).
        self._socket = socket.create_server((host, port or 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
            handler_cancellation=True,
        )
        self._loop.run_until_complete(self._runner.setup())
        site = web.SockSite(self._runner, self._socket)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake backend did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._socket.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_until(predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until true or the bounded timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


async def async_wait_until(
    predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.02
) -> bool:
    """Async twin of :func:`wait_until`, for tests running inside an event loop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return bool(predicate())


def iter_sse(raw: bytes) -> Iterator[bytes]:
    for event in raw.split(b"\n\n"):
        if event.strip():
            yield event
