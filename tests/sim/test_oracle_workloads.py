"""The oracle on the packaged graded workloads: right answers pass, wrong ones fail."""

from __future__ import annotations

import pytest

from quantroute.sim.oracle import QualityOracle
from quantroute.sim.profiles import load_profiles

workloads = pytest.importorskip("quantroute.workloads")


@pytest.mark.parametrize("variant", load_profiles().generative())
def test_the_grader_sees_exactly_the_oracles_right_and_wrong_answers(variant: str) -> None:
    profile = load_profiles().variant(variant)
    oracle = QualityOracle(
        variant,
        profile.quality,
        workloads.answer_key(),
        seed=0,
        wrong_answers=workloads.wrong_answers(),
    )
    outcomes = []
    for suite in workloads.builtin_suites():
        for sample in suite.samples:
            answer = oracle.answer(sample.last_user_text)
            assert answer is not None
            passed = workloads.grade(sample.check, answer).passed
            assert passed == (answer == sample.answer), (sample.id, answer)
            outcomes.append(passed)
    assert 0 < sum(outcomes) < len(outcomes)  # some right, some wrong, as profiled


async def test_a_default_fleet_answers_packaged_prompts() -> None:
    from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig

    config = SimFleetConfig(backends=[SimBackendSpec(id="a", profile="llama3-8b-awq")])
    fleet = SimFleet(config)  # no key given: the packaged workloads' key and wrong answers
    oracle = fleet.backends["a"].oracle
    sample = workloads.builtin_suites()[0].samples[0]
    assert oracle.answer(sample.last_user_text) in {
        sample.answer,
        workloads.wrong_answers()[sample.last_user_text],
    }
