"""PROTOTYPE, not part of quantroute: the gateway with a prefill-aware latency estimate.

``python -m routingbench.proto_gateway --config FILE`` serves a gateway config exactly like
``quantroute serve``, after patching three things in this process only (the source tree is not
touched) to try out a change proposed to the lead:

1. the store keeps, per backend, the prompt tokens of requests sent but not yet answered with a
   first byte (the prefill backlog the gateway itself created; vLLM exports no such gauge);
2. the relay tells the store when a stream's first byte arrives;
3. the ``latency`` scorer adds ``(backlog + this prompt) / prefill rate`` to its TTFT estimate, so a
   backend chewing on a 30k-token prompt, or a slow-prefill 70B for a long prompt, scores lower.

Prefill rates (prompt tokens per second) are what a profiler probe with long prompts would
measure; here they come from the simulator's roofline (dense FLOPs per token over the GPU's
effective FLOP rate), which is what such a probe measures on the simulator.
"""

from __future__ import annotations

import argparse
import contextvars
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from quantroute.config import load_config
from quantroute.core import filters, scorers
from quantroute.core.filters import FilterContext
from quantroute.core.model import BackendState, RequestFeatures
from quantroute.server import gateway as gateway_module
from quantroute.sim.profiles import load_profiles
from quantroute.state.store import StateStore, Ticket

_PROMPT: contextvars.ContextVar[int] = contextvars.ContextVar("prompt_tokens", default=0)


class Backlog:
    """Prompt tokens awaiting their first byte, per backend and ticket."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[int, int]] = {}

    def add(self, ticket: Ticket, tokens: int) -> None:
        self.tokens.setdefault(ticket.backend_id, {})[ticket.number] = tokens

    def done(self, ticket: Ticket) -> None:
        self.tokens.get(ticket.backend_id, {}).pop(ticket.number, None)

    def of(self, backend_id: str) -> int:
        return sum(self.tokens.get(backend_id, {}).values())


def roofline_prefill_rates() -> dict[str, float]:
    """Prompt tokens per second per simulator profile: effective FLOP/s over 2 x parameters."""
    book = load_profiles()
    rates = {}
    for name, variant in book.variants.items():
        gpu = book.gpu_of(variant)
        flops = gpu.peak_flops * gpu.compute_efficiency * variant.kernel_compute_factor
        rates[name] = flops * variant.tensor_parallel_size / (2.0 * variant.num_params)
    return rates


def install(backlog: Backlog, rates: dict[str, float]) -> None:
    original_kv = filters.request_kv_tokens
    original_begin, original_end = StateStore.begin, StateStore.end
    original_relay = gateway_module.Gateway._relay
    original_latency = scorers.REGISTRY["latency"]

    def request_kv_tokens(features: RequestFeatures, policy: Any) -> int:
        _PROMPT.set(features.prompt_tokens)
        return original_kv(features, policy)

    def begin(self: StateStore, backend_id: str, kv_tokens: int) -> Ticket:
        ticket = original_begin(self, backend_id, kv_tokens)
        backlog.add(ticket, _PROMPT.get())
        return ticket

    def end(self: StateStore, ticket: Ticket) -> None:
        backlog.done(ticket)
        original_end(self, ticket)

    async def relay(self: Any, response: Any, attempt: Any, *rest: Any) -> AsyncIterator[bytes]:
        first = True
        async for chunk in original_relay(self, response, attempt, *rest):
            if first:
                backlog.done(attempt.ticket)
                first = False
            yield chunk

    def latency(backend: BackendState, all_: Sequence[BackendState], ctx: FilterContext) -> float:
        rate = rates.get(backend.config.variant_id)
        if rate is None:
            return original_latency(backend, all_, ctx)
        queued = backlog.of(backend.id) + ctx.features.prompt_tokens
        ttft = scorers.expected_ttft_ms(backend, ctx) + 1000.0 * queued / rate
        ref = ctx.policy.latency_reference_ms
        return ref / (ref + ttft)

    gateway_module.request_kv_tokens = request_kv_tokens  # type: ignore[attr-defined]
    StateStore.begin = begin  # type: ignore[method-assign]
    StateStore.end = end  # type: ignore[method-assign]
    gateway_module.Gateway._relay = relay  # type: ignore[method-assign,assignment]
    scorers.REGISTRY["latency"] = latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    install(Backlog(), roofline_prefill_rates())
    from quantroute.serve import serve

    load_config(args.config)  # fail early on a bad file, as `quantroute serve` does
    return serve(args.config, host=None, port=None, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
