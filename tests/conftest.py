"""Suite-wide: a leak is reported by the test that made it.

Warnings are errors (pyproject.toml), ResourceWarning included. An unclosed socket or transport
warns when the garbage collector finalises it, which used to be during whichever later test the
collector happened to run in (CI failed ``tests/replay`` for a transport some earlier tier left
open). Collecting after every test puts the warning, an error, on the test that leaked.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    yield
    gc.collect()
