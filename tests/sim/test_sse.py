"""Raw SSE framing and headers, compared with a real vLLM stream."""

from __future__ import annotations

import json

import httpx

from quantroute.sim.fleet import SimFleet

from .conftest import VLLM_FIXTURES


def frames(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    return raw[:-2].split("\n\n")


def structure(raw: str) -> list[object]:
    """Each frame's shape: key order of the chunk and of its choice, or the frame itself."""
    shapes: list[object] = []
    for frame in frames(raw):
        assert frame.startswith("data: ")
        data = frame.removeprefix("data: ")
        if data == "[DONE]":
            shapes.append(data)
            continue
        chunk = json.loads(data)
        choices = chunk["choices"]
        choice_shape = [list(c) + sorted(c.get("delta", {})) for c in choices]
        shapes.append((list(chunk), choice_shape))
    return shapes


def collapse(shapes: list[object]) -> list[object]:
    """Runs of identically shaped content chunks count once."""
    out: list[object] = []
    for shape in shapes:
        if not out or out[-1] != shape:
            out.append(shape)
    return out


async def test_stream_is_framed_like_vllms(fleet: SimFleet, http: httpx.AsyncClient) -> None:
    captured = (VLLM_FIXTURES / "vllm_stream_sample.txt").read_text()
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.stream("POST", fleet.urls["small"] + "/v1/chat/completions", json=body) as r:
        raw = (await r.aread()).decode()
        headers = r.headers
    assert collapse(structure(raw)) == collapse(structure(captured))
    assert len(frames(raw)) == len(frames(captured))  # role + 20 tokens + usage + DONE
    ids = {json.loads(f[6:])["id"] for f in frames(raw)[:-1]}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    captured_headers = dict(
        line.split(": ", 1)
        for line in (VLLM_FIXTURES / "vllm_stream_headers.txt").read_text().splitlines()[1:]
        if ": " in line
    )
    for name in ("content-type", "vary", "server", "transfer-encoding"):
        assert headers[name] == captured_headers[name]
