"""The profiler: measures each model variant through its own OpenAI API on graded workloads and
writes the capability matrix the gateway loads.

Public API: :class:`ProfileSettings`, :class:`ProfileSession` (``await session.run()``, then
``session.matrix()``), :func:`write_matrix`, :func:`plot_matrix` (in ``quantroute.profiler.plot``),
:func:`show` (in ``quantroute.profiler.show``) and ``command.register`` for the CLI.
"""

from quantroute.profiler.session import ProfileSession, write_matrix
from quantroute.profiler.settings import P99_MIN_SAMPLES, ProfileSettings

__all__ = ["P99_MIN_SAMPLES", "ProfileSession", "ProfileSettings", "write_matrix"]
