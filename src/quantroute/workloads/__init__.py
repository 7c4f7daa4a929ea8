"""Graded workload suites: the sample format, the packaged suites, a loader and the grader.

Public API: :func:`answer_key`, :func:`builtin_suites`, :func:`load_suite`, :func:`grade`,
:func:`wrong_answers` / :func:`near_miss` (answers that fail their check, for the simulator),
:class:`Sample`, :class:`Suite`.
"""

from quantroute.errors import SuiteError
from quantroute.workloads.grader import Grade, grade
from quantroute.workloads.near_miss import near_miss, wrong_answers
from quantroute.workloads.schema import Sample
from quantroute.workloads.suites import (
    Suite,
    answer_key,
    builtin_suite,
    builtin_suites,
    load_suite,
)

__all__ = [
    "Grade",
    "Sample",
    "Suite",
    "SuiteError",
    "answer_key",
    "builtin_suite",
    "builtin_suites",
    "grade",
    "load_suite",
    "near_miss",
    "wrong_answers",
]
