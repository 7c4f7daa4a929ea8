"""What a reload swaps, in one place: the gateway in force and the client limits it carries."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from starlette.requests import Request

from quantroute.resilience.settings import ClientLimits

if TYPE_CHECKING:
    from quantroute.server.gateway import Gateway


class Live:
    """The app's one holder of swapped state, kept as ``app.state.live``. The per-request
    readers (the client-limits middleware, the proxy routes) read its slots directly, where
    ``app.state`` would cost a Python ``__getattr__`` call; the other routes read it through
    :func:`gateway_of`. ``gateway`` is None until the lifespan starts the first gateway."""

    __slots__ = ("gateway", "limits")

    def __init__(self, limits: ClientLimits) -> None:
        self.gateway: Gateway | None = None
        self.limits = limits

    def swap(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.limits = gateway.config.resilience.client


def gateway_of(request: Request) -> Gateway:
    """The gateway in force for a route's request (the lifespan has started it by then)."""
    live: Live = request.app.state.live
    return cast("Gateway", live.gateway)
