"""``/v1/embeddings``, ``/v1/score`` and ``/v1/rerank`` of a simulated embedding backend.

vLLM registers these only for a pooling model (``--runner pooling``), and the generation
routes only for a generative one; the other kind's routes answer 404. Each input is one
request through the engine that generates a single token: prefill is the work, so pooling
requests queue, batch and take KV blocks like the prompts of generation requests do.
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from quantroute.sim import wire
from quantroute.sim import wire_pooling as pw
from quantroute.sim.backend import SimBackend
from quantroute.sim.exchange import Rejected, aborted, finish_all, parse
from quantroute.sim.text import completion_prompt_tokens


def _check_lengths(backend: SimBackend, inputs: list[tuple[str, int]]) -> int:
    limit = backend.identity.max_model_len
    for text, tokens in inputs:
        if len(text) > limit * wire.MAX_CHARS_PER_TOKEN:
            raise Rejected(400, wire.prompt_too_many_chars(len(text), limit))
        if tokens > limit:
            raise Rejected(400, wire.prompt_too_long(tokens, limit))
    return sum(tokens for _, tokens in inputs)


async def _encode(
    backend: SimBackend, inputs: list[tuple[str, int]], request: Request
) -> list[list[float]] | None:
    """Run every input through the engine; its embedding, or None if the client left."""
    jobs = [backend.submit(tokens, 1, "") for _, tokens in inputs]
    if not await finish_all(backend, jobs, request):
        return None
    return [pw.embed(text, backend.identity.embedding_dim) for text, _ in inputs]


def _check_model(backend: SimBackend, model: str | None) -> None:
    if model is not None and model != backend.identity.served_model_name:
        raise Rejected(404, pw.model_not_found(model))


def _texts(texts: list[str]) -> list[tuple[str, int]]:
    return [(t, completion_prompt_tokens(t)) for t in texts]


def add_routes(app: FastAPI, backend: SimBackend) -> None:
    name = backend.identity.served_model_name

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        try:
            body = await parse(request, backend, pw.EmbeddingRequest)
            _check_model(backend, body.model)
            if body.dimensions is not None:
                raise Rejected(400, pw.no_matryoshka(name, body.dimensions))
            inputs = pw.embedding_inputs(body.input)
            tokens = _check_lengths(backend, inputs)
        except Rejected as rejected:
            return rejected.response
        vectors = await _encode(backend, inputs, request)
        if vectors is None:
            return aborted()
        data = [pw.encode(v, body.encoding_format) for v in vectors]
        rid = f"embd-{uuid.uuid4().hex[:16]}"
        return JSONResponse(pw.embedding_response(rid, int(time.time()), name, data, tokens))

    async def score(request: Request) -> Response:
        try:
            body = await parse(request, backend, pw.ScoreRequest)
            _check_model(backend, body.model)
            try:
                pairs = pw.pairs(*body.sides())
            except ValueError as exc:
                raise Rejected(400, wire.bad_request(str(exc))) from exc
            inputs = _texts([t for pair in pairs for t in pair])
            tokens = _check_lengths(backend, inputs)
        except Rejected as rejected:
            return rejected.response
        vectors = await _encode(backend, inputs, request)
        if vectors is None:
            return aborted()
        scores = [pw.cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(pairs))]
        rid = f"score-{uuid.uuid4().hex[:16]}"
        return JSONResponse(pw.score_response(rid, int(time.time()), name, scores, tokens))

    async def rerank(request: Request) -> Response:
        try:
            body = await parse(request, backend, pw.RerankRequest)
            _check_model(backend, body.model)
            documents = pw.as_texts(body.documents)
            inputs = _texts([pw.input_text(body.query), *documents])
            tokens = _check_lengths(backend, inputs)
        except Rejected as rejected:
            return rejected.response
        vectors = await _encode(backend, inputs, request)
        if vectors is None:
            return aborted()
        scores = [pw.cosine(vectors[0], v) for v in vectors[1:]]
        rid = f"score-{uuid.uuid4().hex[:16]}"
        return JSONResponse(pw.rerank_response(rid, name, documents, scores, body.top_n, tokens))

    for path in ("/score", "/v1/score"):
        app.add_api_route(path, score, methods=["POST"])
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.add_api_route(path, rerank, methods=["POST"])
