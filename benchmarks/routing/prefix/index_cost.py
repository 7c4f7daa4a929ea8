"""Where should the prefix index live with several gateway replicas? Both costs, measured.

    pip install -r benchmarks/routing/prefix/requirements.txt  # redis-py; apt's redis-server
    python benchmarks/routing/prefix/index_cost.py

1. **Per-request cost.** The in-process index (``quantroute.core.prefix.PrefixIndex``) against
   the same operations on a Redis started here on loopback: one lookup (every backend's entries
   for the prompt's block keys) and one record (the chosen backend's keys with a time), per
   request, for prompts of 500 / 2,000 / 8,000 / 30,000 tokens and four backends. Redis holds a
   hash per backend (block key -> last time), read with one pipelined HMGET per backend and
   written with one HSET; the Redis figure is wall time per request (round trips included) and
   the client CPU it costs the gateway process.
2. **Accuracy cost of per-replica indexes.** The prefix benchmark's trace replayed offline
   through N gateway replicas behind a random load balancer, each routing a request to the
   backend its own index expects the longest prefix on (else the next in turn): the expected
   hit share of what was sent, with one index per replica against one shared index. A
   session-affine load balancer (hash of ``x-session-id``) is the third column.

Prints a Markdown report; ``--json`` writes the figures too.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from quantroute.core.prefix import (  # noqa: E402
    PrefixIndex,
    PrefixSettings,
    PromptBlocks,
    chat_prefix_text,
)

BACKENDS = ("r1", "r2", "r3", "r4")
SIZES = (500, 2_000, 8_000, 30_000)
SETTINGS = PrefixSettings()


def _prompt(tokens: int, rng: random.Random) -> PromptBlocks:
    text = "".join(rng.choice("abcdefghij ") for _ in range(tokens * 4))
    return PromptBlocks.of(text, SETTINGS)


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median wall µs, mean process CPU µs) per call."""
    walls = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t) * 1e6)
    cpu = (time.process_time() - cpu0) * 1e6 / repeat
    return statistics.median(walls), cpu


def local_cost(prompt: PromptBlocks, repeat: int) -> tuple[float, float]:
    index = PrefixIndex(SETTINGS)
    for b in BACKENDS:
        index.record(b, prompt.keys, 0.0)
    now = [1.0]

    def one() -> None:
        index.match(prompt.keys, now[0], BACKENDS)
        index.record("r1", prompt.keys, now[0])
        now[0] += 0.001

    return _time(one, repeat)


def redis_cost(client: Any, prompt: PromptBlocks, repeat: int) -> tuple[float, float]:
    keys = [str(k) for k in prompt.keys]
    for b in BACKENDS:
        client.hset(f"qr:{b}", mapping=dict.fromkeys(keys, "0"))

    def one() -> None:
        pipe = client.pipeline(transaction=False)
        for b in BACKENDS:
            pipe.hmget(f"qr:{b}", keys)
        pipe.execute()
        client.hset("qr:r1", mapping=dict.fromkeys(keys, f"{time.time():.3f}"))

    return _time(one, repeat)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def measure_costs(repeat: int) -> list[dict[str, float]]:
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            rng = random.Random(5)
            rows = []
            for tokens in SIZES:
                prompt = _prompt(tokens, rng)
                lw, lc = local_cost(prompt, repeat)
                rw, rc = redis_cost(client, prompt, repeat)
                rows.append(
                    {"tokens": tokens, "blocks": len(prompt.keys), "local_wall_us": lw,
                     "local_cpu_us": lc, "redis_wall_us": rw, "redis_cpu_us": rc}
                )  # fmt: skip
            client.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return rows


def accuracy(replicas: int, seed: int = 11) -> dict[str, float]:
    """Expected hit share of the prefix benchmark's trace through ``replicas`` gateways."""
    from routingbench import sessions
    from routingbench.workload import messages_for

    rows = sessions.generate_mixed(sessions.SessionParams(seed=seed))
    prompts = [
        PromptBlocks.of(chat_prefix_text([(m["role"], m["content"]) for m in messages_for(r)]),
                        SETTINGS)
        for r in rows
    ]  # fmt: skip
    result = {}
    for mode in ("shared", "per_replica", "per_replica_session_affine"):
        rng = random.Random(seed)
        shared = PrefixIndex(SETTINGS)
        own = [PrefixIndex(SETTINGS) for _ in range(replicas)]
        truth = PrefixIndex(SETTINGS)  # what the backends really hold (everything sent)
        turn = 0
        hit = total = 0.0
        for row, prompt in zip(rows, prompts, strict=True):
            if mode == "per_replica_session_affine" and row.session is not None:
                replica = hash(row.session) % replicas
            else:
                replica = rng.randrange(replicas)
            index = shared if mode == "shared" else own[replica]
            matched = index.match(prompt.keys, row.t, BACKENDS)
            best = max(BACKENDS, key=lambda b: matched[b])
            if matched[best] == 0:
                best = BACKENDS[turn % len(BACKENDS)]
                turn += 1
            real = truth.match(prompt.keys, row.t, [best])[best]
            hit += prompt.share(real, SETTINGS.block_chars) * prompt.chars
            total += prompt.chars
            index.record(best, prompt.keys, row.t)
            truth.record(best, prompt.keys, row.t)
        result[mode] = hit / total
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=300)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    costs = measure_costs(args.repeat)
    print("| prompt tokens | blocks | in-process µs (CPU) | Redis µs wall (client CPU) |")
    print("|--:|--:|--:|--:|")
    for r in costs:
        print(
            f"| {r['tokens']:,} | {r['blocks']} | {r['local_wall_us']:.0f} ({r['local_cpu_us']:.0f}) "
            f"| {r['redis_wall_us']:.0f} ({r['redis_cpu_us']:.0f}) |"
        )
    acc = {n: accuracy(n) for n in (1, 2, 4)}
    print(
        "\n| gateway replicas | shared index | one per replica | per replica, session-affine LB |"
    )
    print("|--:|--:|--:|--:|")
    for n, a in acc.items():
        print(
            f"| {n} | {a['shared']:.1%} | {a['per_replica']:.1%} "
            f"| {a['per_replica_session_affine']:.1%} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"costs": costs, "accuracy": acc}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
