"""Loaded at start-up by a proxy that ``calls.py`` starts (this directory leads its PYTHONPATH).
With ``$QR_PATHSTAMP`` set, it installs the request stamps of ``stamps.py`` instead
(``pathstamp.py`` reads them).

SIGUSR1 starts counting the profile events of the main thread (every Python function call and
coroutine resumption, every call of a C function); SIGUSR2 stops and writes the counts, in total
and per function, as JSON to ``$QR_CALLS_OUT``. Without that variable it does nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from types import FrameType

_events: Counter[str] = Counter()
_functions: Counter[str] = Counter()


def _where(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.rsplit(marker, 1)[-1]
    return filename


def _profile(frame: FrameType, event: str, arg: object) -> None:
    _events[event] += 1
    if event == "call":
        code = frame.f_code
        _functions[f"{_where(code.co_filename)}:{code.co_name}"] += 1
    elif event == "c_call":
        _functions[f"C {getattr(arg, '__qualname__', type(arg).__name__)}"] += 1


def _start(_signum: int, _frame: FrameType | None) -> None:
    _events.clear()
    _functions.clear()
    sys.setprofile(_profile)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    sys.setprofile(None)
    with open(os.environ["QR_CALLS_OUT"], "w") as out:
        json.dump({"events": dict(_events), "functions": dict(_functions)}, out)


if os.environ.get("QR_CALLS_OUT"):
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
elif os.environ.get("QR_PATHSTAMP"):
    import stamps

    stamps.install(os.environ["QR_PATHSTAMP"])
