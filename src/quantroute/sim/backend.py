"""One simulated vLLM server's runtime: the engine driven in scaled wall time.

`SimBackend.run()` is the engine loop: it steps the pure engine at the simulated time
its previous step ended, sleeps until the wall clock (x `time_scale`) reaches the
step's end, then hands each new token to the request it belongs to. When the host
cannot keep up with the time scale, simulated time simply runs slower than
wall x scale (`lag_s` grows) while staying consistent inside the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from quantroute.base import Clock
from quantroute.sim.engine import Engine, EngineRequest, PromptTooLongError, TokenEvent
from quantroute.sim.faults import FaultSwitch
from quantroute.sim.kv_blocks import block_hashes
from quantroute.sim.metrics import SimMetrics
from quantroute.sim.oracle import QualityOracle
from quantroute.sim.text import FillerText, split_pieces

RECEIVED_KEEP = 256


@dataclass(frozen=True)
class BackendIdentity:
    """What the server says about itself."""

    backend_id: str
    served_model_name: str
    model_root: str
    max_model_len: int
    runner: Literal["generate", "pooling"] = "generate"
    embedding_dim: int = 0
    responses_store: bool = False
    prompt_tokens_details: bool = False
    """vLLM's --enable-prompt-tokens-details: usage reports `cached_tokens` when non-zero."""
    api_key: str | None = None
    """vLLM's ``--api-key``: required as a Bearer token on /v1/*."""


class Job:
    """One request inside the backend: its output text and its stream of tokens."""

    def __init__(self, request_id: str, prompt_tokens: int, answer: str | None, seed: str) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.finished = False
        self.finish_reason: str | None = None
        self.output_tokens = 0
        self.cached_tokens = 0
        self._pieces = split_pieces(answer) if answer is not None else None
        self._filler = FillerText(seed)
        self._queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()

    @property
    def natural_output_tokens(self) -> int | None:
        """The answer's length in tokens when the answer is known."""
        return len(self._pieces) if self._pieces else None

    def piece(self, index: int) -> str:
        """The text of output token `index`; made-up words past the known answer."""
        known = self._pieces or []
        if index < len(known):
            return known[index]
        return self._filler.piece(index - len(known))

    async def events(self) -> AsyncIterator[TokenEvent]:
        """Tokens as the engine produces them; ends after the last one or on shutdown."""
        while True:
            event = await self._queue.get()
            if event is None:
                return
            self.output_tokens = event.index + 1
            self.cached_tokens = event.cached_tokens
            if event.finish_reason is not None:
                self.finished = True
                self.finish_reason = event.finish_reason
            yield event
            if self.finished:
                return

    def push(self, event: TokenEvent | None) -> None:
        self._queue.put_nowait(event)


class SimBackend:
    """Engine, metrics and answer oracle of one backend, and the loop driving them."""

    def __init__(
        self,
        identity: BackendIdentity,
        engine: Engine,
        metrics: SimMetrics,
        oracle: QualityOracle,
        *,
        time_scale: float,
        clock: Clock | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.identity = identity
        self.engine = engine
        self.metrics = metrics
        self.oracle = oracle
        self.time_scale = time_scale
        self._clock = clock
        self._t0: float | None = None
        self._cursor = 0.0
        self._busy = False
        self._jobs: dict[str, Job] = {}
        self._wake = asyncio.Event()
        self._seq = 0
        self.received: deque[tuple[str, Any]] = deque(maxlen=RECEIVED_KEEP)
        self.faults = FaultSwitch()
        self.authorizations: deque[str | None] = deque(maxlen=10_000)
        """The ``Authorization`` header of every /v1 request received (None: absent)."""

    # -- time ---------------------------------------------------------------------

    def _wall(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def sim_now(self) -> float:
        """Simulated seconds since the loop started: wall time x time_scale."""
        if self._t0 is None:
            return 0.0
        return (self._wall() - self._t0) * self.time_scale

    @property
    def lag_s(self) -> float:
        """How far the engine's timeline trails wall time x time_scale."""
        return max(0.0, self.sim_now() - self._cursor) if self._busy else 0.0

    def _event_time(self) -> float:
        now = self.sim_now()
        return min(now, self._cursor) if self._busy else now

    # -- requests -----------------------------------------------------------------

    def record(self, path: str, body: Any) -> None:
        """Keep the last RECEIVED_KEEP request bodies (path, parsed JSON), for tests to read."""
        self.received.append((path, body))

    def submit(
        self,
        prompt_tokens: int,
        max_tokens: int | None,
        prompt_text: str,
        *,
        ignore_eos: bool = False,
        min_tokens: int = 0,
        prefix: str = "",
        prompt_pieces: Sequence[str] = (),
    ) -> Job:
        """Queue a request; PromptTooLongError when it cannot fit the context. ``prefix`` is
        answer text already given (a continued final message): only what follows it is made.
        ``prompt_pieces`` are the prompt's tokens (``text.chat_prompt_pieces``), hashed into
        blocks for the engine's prefix cache; without them nothing is cached."""
        self._seq += 1
        request_id = uuid.uuid4().hex[:16]
        seed = f"{self.oracle.seed}:{self.identity.backend_id}:{self._seq}"
        answer = self.oracle.answer(prompt_text)
        if prefix:
            answer = answer[len(prefix) :] if answer and answer.startswith(prefix) else None
        job = Job(request_id, prompt_tokens, answer, seed)
        request = EngineRequest(
            request_id,
            prompt_tokens,
            max_tokens,
            job.natural_output_tokens,
            ignore_eos=ignore_eos,
            min_tokens=min_tokens,
            block_hashes=block_hashes(prompt_pieces, self.engine.config.block_size),
        )
        self.engine.add_request(request, self._event_time())
        self._jobs[request_id] = job
        self._wake.set()
        return job

    def abort(self, request_id: str) -> None:
        """Abort a request still in the engine (no-op once finished)."""
        job = self._jobs.pop(request_id, None)
        if job is None:
            return
        finished = self.engine.abort(request_id, self._event_time())
        if finished is not None:
            self.metrics.observe_finished(finished)
        job.push(None)

    def close(self) -> None:
        """Abort every request; their streams end."""
        for request_id in list(self._jobs):
            self.abort(request_id)

    def metrics_text(self) -> bytes:
        """The `/metrics` body, gauges set from the engine's state now."""
        self.metrics.set_state(self.engine.stats())
        return self.metrics.render()

    # -- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Drive the engine until cancelled."""
        self._t0 = self._wall()
        while True:
            if not self.engine.has_work():
                self._busy = False
                self._wake.clear()
                await self._wake.wait()
                self._cursor = max(self._cursor, self.sim_now())
                continue
            self._busy = True
            out = self.engine.step(self._cursor)
            self._cursor = out.end
            await asyncio.sleep(max(0.0, (out.end - self.sim_now()) / self.time_scale))
            self.metrics.observe_step(out)
            for event in out.tokens:
                self._deliver(event)

    def _deliver(self, event: TokenEvent) -> None:
        job = self._jobs.get(event.request_id)
        if job is None:
            return
        if event.finish_reason is not None:
            del self._jobs[event.request_id]
        job.push(event)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SimBackend]:
        """Run the loop in the current event loop for the duration of the block."""
        task = asyncio.create_task(self.run(), name=f"sim-engine-{self.identity.backend_id}")
        try:
            yield self
        finally:
            self.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["BackendIdentity", "Job", "PromptTooLongError", "SimBackend"]
