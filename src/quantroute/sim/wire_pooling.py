"""Embeddings, score and rerank as vLLM 0.32.0 serves them from an embedding model.

Shapes follow ``vllm/entrypoints/pooling/{embed,scoring}/protocol.py`` and their serving
modules: ``/v1/embeddings`` answers ``{"id": "embd-...", "object": "list", "created",
"model", "data": [{"index", "object": "embedding", "embedding"}], "usage"}`` with floats or,
for ``encoding_format: "base64"``, little-endian float32 bytes in base64 (what the official
client asks for by default); ``/v1/score`` pairs its two sides 1:1, 1:N or N:N and answers
``{"id": "score-...", "object": "list", "created", "model", "data": [{"index", "object":
"score", "score"}], "usage"}``; ``/v1/rerank`` answers ``{"id", "model", "usage":
{"prompt_tokens", "total_tokens"}, "results": [{"index", "document": {"text",
"multi_modal"}, "relevance_score"}]}`` sorted by score, cut to ``top_n`` when given. An
embedding model's score is the cosine similarity of the two embeddings.

The simulated embedding is a signed feature hash of the lower-cased words, L2-normalised:
deterministic, and texts sharing words score higher than texts that do not.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from typing import Any, Literal

from pydantic import Field

from quantroute.sim.text import completion_prompt_tokens
from quantroute.sim.wire import JsonObject, _Lenient, bad_request, error_body

_WORD = re.compile(r"\w+")
ScoreInput = str | dict[str, Any]


class EmbeddingRequest(_Lenient):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ScoreRequest(_Lenient):
    model: str | None = None
    text_1: ScoreInput | list[ScoreInput] | None = None
    text_2: ScoreInput | list[ScoreInput] | None = None
    queries: ScoreInput | list[ScoreInput] | None = None
    documents: ScoreInput | list[ScoreInput] | None = None
    items: ScoreInput | list[ScoreInput] | None = None
    data_1: ScoreInput | list[ScoreInput] | None = None
    data_2: ScoreInput | list[ScoreInput] | None = None

    def sides(self) -> tuple[list[str], list[str]]:
        """(left, right) texts, whichever pair of field names the request used."""
        for left, right in (
            (self.queries, self.documents),
            (self.queries, self.items),
            (self.data_1, self.data_2),
            (self.text_1, self.text_2),
        ):
            if left is not None and right is not None:
                return as_texts(left), as_texts(right)
        raise ValueError(
            "one pair of text_1/text_2, queries/documents, queries/items, data_1/data_2"
        )


class RerankRequest(_Lenient):
    model: str | None = None
    query: ScoreInput
    documents: ScoreInput | list[ScoreInput]
    top_n: int = Field(default=0, ge=0)


def input_text(value: ScoreInput) -> str:
    if isinstance(value, str):
        return value
    parts = value.get("content") or []
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def as_texts(value: ScoreInput | list[ScoreInput]) -> list[str]:
    return [input_text(v) for v in value] if isinstance(value, list) else [input_text(value)]


def embedding_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[tuple[str, int]]:
    """(text, prompt tokens) per input; token-id inputs count exactly."""
    if isinstance(value, str):
        return [(value, completion_prompt_tokens(value))]
    if all(isinstance(v, int) for v in value):
        ids = [int(v) for v in value]  # type: ignore[arg-type]
        return [(" ".join(map(str, ids)), len(ids))]
    out: list[tuple[str, int]] = []
    for v in value:
        if isinstance(v, list):
            out.append((" ".join(map(str, v)), len(v)))
        else:
            out.append((str(v), completion_prompt_tokens(str(v))))
    return out


def embed(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vector[h % dim] += 1.0 if h >> 63 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def usage(prompt_tokens: int) -> JsonObject:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
            "completion_tokens": 0, "prompt_tokens_details": None,
            "completion_tokens_details": None}  # fmt: skip


def embedding_response(
    rid: str, created: int, model: str, data: list[list[float] | str], prompt_tokens: int
) -> JsonObject:
    items = [{"index": i, "object": "embedding", "embedding": e} for i, e in enumerate(data)]
    return {"id": rid, "object": "list", "created": created, "model": model, "data": items,
            "usage": usage(prompt_tokens)}  # fmt: skip


def score_response(
    rid: str, created: int, model: str, scores: list[float], prompt_tokens: int
) -> JsonObject:
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
    return {"id": rid, "object": "list", "created": created, "model": model, "data": data,
            "usage": usage(prompt_tokens)}  # fmt: skip


def rerank_response(
    rid: str, model: str, documents: list[str], scores: list[float], top_n: int, prompt_tokens: int
) -> JsonObject:
    ranked = sorted(enumerate(zip(documents, scores, strict=True)), key=lambda r: -r[1][1])
    if 0 < top_n < len(ranked):
        ranked = ranked[:top_n]
    results = [
        {"index": i, "document": {"text": doc, "multi_modal": None}, "relevance_score": s}
        for i, (doc, s) in ranked
    ]
    use = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"id": rid, "model": model, "usage": use, "results": results}


def pairs(left: list[str], right: list[str]) -> list[tuple[str, str]]:
    """vLLM's pairing: 1:1, 1:N or N:N; anything else is a 400."""
    if len(left) == 1:
        return [(left[0], r) for r in right]
    if len(left) == len(right):
        return list(zip(left, right, strict=True))
    raise ValueError("Input lengths must be either 1:1, 1:N or N:N")


def no_matryoshka(model: str, dimensions: int) -> JsonObject:
    return bad_request(
        f"Model {model!r} does not support Matryoshka embeddings; dimensions must be unset "
        f"(received dimensions={dimensions})."
    )


def model_not_found(model: str) -> JsonObject:
    """The pooling routes' 404: no aliases listed and no ``param`` (unlike generation's)."""
    return error_body(f"The model `{model}` does not exist.", "NotFoundError", 404)
