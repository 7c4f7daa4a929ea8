"""One streamed chat request through the backend's own OpenAI API, timed.

TTFT is the wall time from sending the request to the first chunk carrying content. The request's
inter-token latency is its decode time divided by the tokens after the first:
``(t_last - t_first) / (completion_tokens - 1)``, with the token count taken from the ``usage``
the server reports (``stream_options.include_usage``), never from counting chunks, since one chunk
may carry several tokens. A stream without ``usage`` is recorded as an error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

import httpx2
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from quantroute.base import Clock
from quantroute.workloads import Sample


@dataclass(frozen=True, slots=True)
class Observation:
    """What one request showed. Times are wall seconds; None when not observed."""

    ok: bool
    text: str = ""
    ttft_s: float | None = None
    itl_s: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    timed_out: bool = False
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0


@dataclass
class _Stream:
    started: float
    first: float | None = None
    last: float | None = None
    usage: Any = None

    def observe(self, chunk: Any, now: float) -> str:
        if chunk.usage is not None:
            self.usage = chunk.usage
        text = "".join(c.delta.content or "" for c in chunk.choices if c.delta is not None)
        if text:
            self.first = self.first if self.first is not None else now
            self.last = now
        return text


def make_client(base_url: str, api_key: str) -> AsyncOpenAI:
    """An OpenAI client for one backend: no retries, no proxies from the environment, the
    library's connection limits (1000, above any sweep level)."""
    http = openai.DefaultAsyncHttpxClient(trust_env=False)
    return AsyncOpenAI(
        base_url=base_url.rstrip("/") + "/v1",
        api_key=api_key,
        max_retries=0,
        timeout=None,
        http_client=http,
    )


def _finish(stream: _Stream, text: str, ended: float) -> Observation:
    usage = stream.usage
    if usage is None or usage.completion_tokens is None:
        return Observation(
            ok=False,
            text=text,
            error="no usage in the stream (the server must honour stream_options.include_usage)",
            started=stream.started,
            ended=ended,
        )
    tokens = int(usage.completion_tokens)
    itl = None
    if stream.first is not None and stream.last is not None and tokens > 1:
        itl = (stream.last - stream.first) / (tokens - 1)
    ttft = None if stream.first is None else stream.first - stream.started
    return Observation(
        ok=True,
        text=text,
        ttft_s=ttft,
        itl_s=itl,
        completion_tokens=tokens,
        prompt_tokens=usage.prompt_tokens,
        started=stream.started,
        ended=ended,
    )


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {str(exc.message)[:160]}"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return f"connection failed: {type(cause).__name__}: {str(cause)[:120]}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


async def run_sample(
    client: AsyncOpenAI,
    model: str,
    sample: Sample,
    timeout_s: float,
    clock: Clock = time.perf_counter,
) -> Observation:
    """Send ``sample`` streaming, at temperature 0, and time it; never raises for request errors."""
    stream = _Stream(started=clock())
    parts: list[str] = []
    messages = cast(list[ChatCompletionMessageParam], sample.openai_messages())
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=sample.max_tokens,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with response:
                async for chunk in response:
                    parts.append(stream.observe(chunk, clock()))
    except TimeoutError:
        return Observation(
            ok=False, timed_out=True, error=f"timed out after {timeout_s:.3g} s wall",
            started=stream.started, ended=clock(),
        )  # fmt: skip
    except (openai.OpenAIError, httpx2.HTTPError, httpx2.StreamError, OSError, ValueError) as exc:
        return Observation(
            ok=False, error=describe_error(exc), started=stream.started, ended=clock()
        )
    return _finish(stream, "".join(parts), clock())
