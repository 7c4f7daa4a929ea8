"""decide() per client API: only backends that serve the API; pooling on load alone."""

from __future__ import annotations

import pytest

from quantroute.config import POOLING_APIS, TASK_TYPES, ApiName
from quantroute.core.model import Outcome
from quantroute.core.scheduler import decide

from .helpers import VariantSpec, backend, features, matrix, policy, snapshot

GEN = backend("gen")
EMB = backend("emb", apis=POOLING_APIS)
BOTH = ("gen", "emb")


@pytest.mark.parametrize(
    ("api", "chosen", "other"),
    [
        ("chat", "gen", "emb"),
        ("completions", "gen", "emb"),
        ("responses", "gen", "emb"),
        ("messages", "gen", "emb"),
        ("embeddings", "emb", "gen"),
        ("score", "emb", "gen"),
        ("rerank", "emb", "gen"),
    ],
)
def test_only_backends_serving_the_api_are_candidates(
    api: ApiName, chosen: str, other: str
) -> None:
    d = decide(features(api=api), snapshot(GEN, EMB), None, policy(BOTH))
    assert d.chosen == chosen and d.ranked == (chosen,)
    assert other not in d.rejected  # not a candidate, so not a rejection either


def test_a_group_where_no_backend_serves_the_api_is_unsupported_not_busy() -> None:
    d = decide(
        features(api="embeddings"), snapshot(GEN, backend("gen2")), None, policy(("gen", "gen2"))
    )
    assert d.outcome is Outcome.UNSUPPORTED_API and d.chosen is None


def test_pooling_ignores_the_matrix_floor_and_stability() -> None:
    bad = VariantSpec(quality=dict.fromkeys(TASK_TYPES, 0.0), stable=False, ttft=9000.0, cost=99.0)
    m = matrix(emb=bad, emb2=VariantSpec(ttft=10.0, cost=0.1))
    two = snapshot(EMB, backend("emb2", apis=POOLING_APIS))
    chat_like = decide(features(api="chat"), snapshot(backend("emb")), m, policy(("emb",), 0.5))
    assert chat_like.outcome is Outcome.NO_BACKEND  # for generation the matrix applies
    d = decide(features(api="embeddings"), two, m, policy(("emb", "emb2"), floor=0.5))
    assert set(d.ranked) == {"emb", "emb2"}  # neither stability nor the floor applies
    assert set(d.scores["emb"].parts) == {"headroom", "least_loaded"}  # load alone
    assert d.scores["emb"].total == pytest.approx(d.scores["emb2"].total)  # latency, cost unused


def test_pooling_goes_to_the_less_loaded_backend() -> None:
    busy = backend("emb", running=40, apis=POOLING_APIS)
    idle = backend("emb2", running=0, apis=POOLING_APIS)
    d = decide(features(api="rerank"), snapshot(busy, idle), None, policy(("emb", "emb2")))
    assert d.chosen == "emb2"


def test_pooling_profile_is_configurable() -> None:
    p = policy(BOTH, scorers={"pooling": [{"name": "least_loaded", "weight": 1.0}]})
    d = decide(features(api="embeddings"), snapshot(GEN, EMB), None, p)
    assert set(d.scores["emb"].parts) == {"least_loaded"}
