"""The quality oracle: profiled rates, determinism, and plausibly wrong answers."""

from __future__ import annotations

import json
import math

import pytest

from quantroute.sim.oracle import QualityOracle, wrong_answer
from quantroute.sim.profiles import TASK_TYPES, load_profiles

SAMPLES = 400
REFERENCES = {
    "coding": "def solve(xs):\n    return sorted(xs)",
    "reasoning": "The answer is 128",
    "extraction": '{"name": "Ada", "year": 1843, "languages": ["en"]}',
    "chat": "Paris is the capital of France, on the Seine.",
}


def sample_key() -> dict[str, tuple[str, str]]:
    return {
        f"{task} sample {i}": (task, REFERENCES[task])
        for task in TASK_TYPES
        for i in range(SAMPLES)
    }


@pytest.mark.parametrize("variant", load_profiles().generative())
def test_correct_at_the_profiled_rate(variant: str) -> None:
    quality = load_profiles().variant(variant).quality
    key = sample_key()
    oracle = QualityOracle(variant, quality, key, seed=11)
    for task in TASK_TYPES:
        p = quality.for_task(task)
        correct = sum(
            oracle.answer(f"{task} sample {i}") == REFERENCES[task] for i in range(SAMPLES)
        )
        bound = 4 * math.sqrt(SAMPLES * p * (1 - p))  # 4 sigma: fails ~1 in 16,000
        assert abs(correct - SAMPLES * p) <= bound, (variant, task, correct / SAMPLES, p)


def test_the_stronger_variant_answers_more_correctly() -> None:
    book = load_profiles()
    key = sample_key()

    def score(variant: str) -> int:
        oracle = QualityOracle(variant, book.variant(variant).quality, key, seed=0)
        return sum(oracle.answer(k) == v[1] for k, v in key.items())

    assert score("llama3-70b-awq") > score("llama3-8b-fp16") > score("llama3-8b-awq")


def test_answers_are_fixed_by_seed_variant_and_sample() -> None:
    quality = load_profiles().variant("llama3-8b-awq").quality
    key = sample_key()
    first = QualityOracle("llama3-8b-awq", quality, key, seed=5)
    again = QualityOracle("llama3-8b-awq", quality, key, seed=5)
    other_seed = QualityOracle("llama3-8b-awq", quality, key, seed=6)
    other_variant = QualityOracle("llama3-8b-fp16", quality, key, seed=5)
    answers = [first.answer(k) for k in key]
    assert answers == [again.answer(k) for k in key]
    assert answers != [other_seed.answer(k) for k in key]
    assert answers != [other_variant.answer(k) for k in key]


def test_prompts_outside_the_key_get_no_answer() -> None:
    quality = load_profiles().variant("llama3-8b-awq").quality
    assert QualityOracle("v", quality, {}, seed=0).answer("anything") is None


@pytest.mark.parametrize("choice", [0.1, 0.3, 0.6, 0.9])
def test_wrong_json_is_valid_json_with_a_wrong_or_extra_field(choice: float) -> None:
    reference = REFERENCES["extraction"]
    wrong = wrong_answer(reference, "extraction", choice)
    parsed = json.loads(wrong)  # silent: still valid JSON
    assert parsed != json.loads(reference)
    assert set(json.loads(reference)) <= set(parsed)


@pytest.mark.parametrize("choice", [0.1, 0.9])
def test_wrong_code_misses_the_required_signature(choice: float) -> None:
    wrong = wrong_answer(REFERENCES["coding"], "coding", choice)
    assert "def solve(" not in wrong


@pytest.mark.parametrize("choice", [0.0, 0.3, 0.6, 0.9])
def test_wrong_number(choice: float) -> None:
    wrong = wrong_answer(REFERENCES["reasoning"], "reasoning", choice)
    assert wrong.startswith("The answer is ") and wrong != REFERENCES["reasoning"]


@pytest.mark.parametrize("choice", [0.2, 0.8])
def test_broken_chat(choice: float) -> None:
    wrong = wrong_answer(REFERENCES["chat"], "chat", choice)
    assert wrong != REFERENCES["chat"] and wrong
