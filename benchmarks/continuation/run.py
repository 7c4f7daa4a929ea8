"""Share of streams that complete while a backend is killed, with and without continuation.

Two simulated vLLM replicas of one variant, each its own process (``quantroute simulate``), and
two gateways in front of the same pair: one with continuation (the default), one with it off.
Each round starts ``--streams`` streams split evenly between the gateways, SIGKILLs backend a1
``--kill-after-s`` into the round (every stream it serves breaks mid-answer), waits for every
stream, then restarts a1 for the next round. A stream *completes* when the client got exactly
``--max-tokens`` content chunks, one finish reason, no error event and one ``data: [DONE]``.

    .venv/bin/python benchmarks/continuation/run.py --rounds 3 --streams 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

from quantroute.config import parse_config
from quantroute.testing import procs
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

PROFILE = "llama3-8b-awq"
HERE = Path(__file__).parent


def start_backend(name: str, port: int, scale: float, workdir: Path) -> procs.Child:
    spec = {"time_scale": scale, "seed": 1, "backends": [{"id": name, "profile": PROFILE, "port": port}]}  # fmt: skip
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    child = procs.start(name, [*procs.quantroute_command(), "simulate", "--config", str(path)], workdir)  # fmt: skip
    url = f"http://127.0.0.1:{port}/health"
    ok = wait_until(lambda: _get(url) == 200, 30)
    assert ok, child.tail()
    return child


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return 0


def gateway(ports: dict[str, int], enabled: bool) -> GatewayThread:
    rows = [
        {"id": b, "url": f"http://127.0.0.1:{p}", "served_model_name": PROFILE,
         "variant": PROFILE, "max_seq_len": 8192, "capacity": 64}
        for b, p in ports.items()
    ]  # fmt: skip
    config = parse_config(
        {
            "backends": rows,
            "groups": [{"name": "auto", "variants": [PROFILE]}],
            "continuation": {"enabled": enabled},
            "policy": {"scrape_interval_s": 0.2, "down_after_failures": 1},
        }
    )
    return GatewayThread(config).start()


async def one_stream(client: httpx.AsyncClient, url: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True}  # fmt: skip
    chunks = finishes = errors = done = 0
    continued = False
    backend = "?"
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            backend = r.headers.get("x-quantroute-backend", "?")
            async for line in r.aiter_lines():
                if line.startswith(": quantroute continued"):
                    continued = True
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done += 1
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    errors += 1
                for choice in event.get("choices", ()):
                    chunks += bool(choice["delta"].get("content"))
                    finishes += choice["finish_reason"] is not None
    except httpx.HTTPError:
        errors += 1
    complete = chunks == max_tokens and finishes == 1 and errors == 0 and done == 1
    return {"backend": backend, "complete": complete, "continued": continued}


async def round_(urls: dict[str, str], args: argparse.Namespace, kill: Any) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=120) as client:
        tasks = [
            asyncio.create_task(one_stream(client, urls[mode], args.max_tokens))
            for _ in range(args.streams // 2)
            for mode in urls
        ]
        modes = [mode for _ in range(args.streams // 2) for mode in urls]
        await asyncio.sleep(args.kill_after_s)
        kill()
        results = await asyncio.gather(*tasks)
    return [{**r, "mode": m} for r, m in zip(results, modes, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=150)
    parser.add_argument("--kill-after-s", type=float, default=1.0)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    ports = {"a1": procs.free_port(), "a2": procs.free_port()}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        children = {b: start_backend(b, p, args.time_scale, work) for b, p in ports.items()}
        gateways = {"with": gateway(ports, True), "without": gateway(ports, False)}
        try:
            for number in range(args.rounds):
                for g in gateways.values():
                    fresh = lambda g=g: all(  # noqa: E731
                        r["state"] == "fresh"
                        for r in httpx.get(g.url + "/admin/backends").json()["backends"]
                    )
                    assert wait_until(fresh, 30), "backends not fresh"

                def kill() -> None:
                    os.killpg(children["a1"].pid, signal.SIGKILL)

                urls = {mode: g.url for mode, g in gateways.items()}
                started = time.monotonic()
                rows = asyncio.run(round_(urls, args, kill))
                results += [{**r, "round": number} for r in rows]
                print(f"round {number}: {time.monotonic() - started:.1f} s")
                procs.stop(children["a1"])
                children["a1"] = start_backend("a1", ports["a1"], args.time_scale, work)
        finally:
            for g in gateways.values():
                g.stop()
            for child in children.values():
                procs.stop(child)
    summary = summarise(results)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "summary": summary}, indent=2))  # fmt: skip
    print(json.dumps(summary, indent=2))


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("with", "without"):
        rows = [r for r in results if r["mode"] == mode]
        on_killed = [r for r in rows if r["backend"] == "a1"]
        out[mode] = {
            "streams": len(rows),
            "complete": sum(r["complete"] for r in rows),
            "complete_share": round(sum(r["complete"] for r in rows) / max(1, len(rows)), 3),
            "on_killed_backend": len(on_killed),
            "on_killed_backend_complete": sum(r["complete"] for r in on_killed),
            "continued": sum(r["continued"] for r in rows),
            "by_backend": dict(Counter(r["backend"] for r in rows)),
        }
    return out


if __name__ == "__main__":
    main()
