"""One write for a whole answer: a scope extension the gateway's HTTP protocol offers
(:mod:`quantroute.resilience.header_timeout`) and a whole answer uses
(:class:`quantroute.proxy.relay.WholeResponse`), named here so neither imports the other."""

from __future__ import annotations

from typing import Protocol

ONE_WRITE = "quantroute.one_write"
"""The scope extension (``scope["extensions"]``) a whole answer uses to go out in one write: a
:class:`OneWrite`."""


class OneWrite(Protocol):
    def hold(self) -> None:
        """The next write (an answer's status line and headers) waits for the one after it (its
        body): both go to the socket in one call."""
        ...

    def release(self) -> None:
        """Writes what is still held (no body followed it), unless the connection is closing."""
        ...
