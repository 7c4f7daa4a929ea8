"""Backends that join and leave routing without a restart: strict DNS and Kubernetes pods.

``await start_discovery(config, apply)`` (:mod:`quantroute.discovery.fleet`) runs the sources the
config names (``discovery.dns``: :mod:`quantroute.discovery.strict_dns`; ``discovery.kubernetes``)
and hands ``apply`` the merged backend list whenever it changes.

``await start_kubernetes_discovery(cfg, on_change)`` lists the pods ``cfg.label_selector``
selects in ``cfg.namespace``, calls ``on_change`` with the whole backend list, keeps it current
through a watch, and returns a handle whose ``aclose()`` stops it. The pod contract (labels and
annotations) is in :mod:`quantroute.discovery.pods` and docs/discovery.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantroute.config import KubernetesDiscoveryConfig
from quantroute.discovery.fleet import Fleet, start_discovery

if TYPE_CHECKING:  # kubernetes_asyncio costs ~0.7 s and ~40 MB: only loaded when configured
    from quantroute.discovery.watcher import Backoff, KubernetesDiscovery, OnChange

__all__ = [
    "Backoff",
    "Fleet",
    "KubernetesDiscovery",
    "OnChange",
    "start_discovery",
    "start_kubernetes_discovery",
]

FIRST_LIST_WAIT_S = 15.0
_LAZY = ("Backoff", "KubernetesDiscovery", "OnChange")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from quantroute.discovery import watcher

        return getattr(watcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def start_kubernetes_discovery(
    cfg: KubernetesDiscoveryConfig, on_change: OnChange, *, backoff: Backoff | None = None
) -> KubernetesDiscovery:
    """Start discovery; returns once the first list answered (or failed, or 15 s passed).

    Raises :class:`~quantroute.errors.ConfigError` when no Kubernetes credentials can be loaded.
    An unreachable API server is not fatal: discovery keeps retrying with backoff.
    """
    from quantroute.discovery._kube import KubeClient, own_namespace
    from quantroute.discovery.watcher import KubernetesDiscovery

    if cfg.namespace is None:
        cfg = cfg.model_copy(update={"namespace": own_namespace()})
    source = await KubeClient.create(cfg)
    discovery = KubernetesDiscovery(cfg, source, on_change, backoff)
    discovery.start()
    await discovery.wait_first_attempt(FIRST_LIST_WAIT_S)
    return discovery
