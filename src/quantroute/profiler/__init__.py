"""The profiler: measures each model variant through its own OpenAI API on graded workloads and
writes the capability matrix the gateway loads.

Public API: :class:`ProfileSettings`, :class:`ProfileSession` (``await session.run()``, then
``session.matrix()``), :func:`write_matrix`, :func:`plot_matrix` (in ``quantroute.profiler.plot``),
:func:`show` (in ``quantroute.profiler.show``) and ``command.register`` for the CLI.

The session and everything under it import the OpenAI client, which belongs to the optional
``profiler`` extra: they load on first use, so ``quantroute matrix show`` and the CLI's help work
without it.
"""

from typing import TYPE_CHECKING

from quantroute.profiler.settings import P99_MIN_SAMPLES, ProfileSettings

if TYPE_CHECKING:
    from quantroute.profiler.session import ProfileSession, write_matrix

__all__ = ["P99_MIN_SAMPLES", "ProfileSession", "ProfileSettings", "write_matrix"]


def __getattr__(name: str) -> object:
    if name in ("ProfileSession", "write_matrix"):
        from quantroute.profiler import session

        return getattr(session, name)
    raise AttributeError(f"module 'quantroute.profiler' has no attribute {name!r}")
