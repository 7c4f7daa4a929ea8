"""Backends discovered from Kubernetes pods: they join and leave routing without a restart.

``await start_kubernetes_discovery(cfg, on_change)`` lists the pods ``cfg.label_selector``
selects in ``cfg.namespace``, calls ``on_change`` with the whole backend list, keeps it current
through a watch, and returns a handle whose ``aclose()`` stops it. The pod contract (labels and
annotations) is in :mod:`quantroute.discovery.pods` and docs/discovery.md.
"""

from __future__ import annotations

from quantroute.config import KubernetesDiscoveryConfig
from quantroute.discovery._kube import KubeClient
from quantroute.discovery.watcher import Backoff, KubernetesDiscovery, OnChange

__all__ = ["Backoff", "KubernetesDiscovery", "OnChange", "start_kubernetes_discovery"]

FIRST_LIST_WAIT_S = 15.0


async def start_kubernetes_discovery(
    cfg: KubernetesDiscoveryConfig, on_change: OnChange, *, backoff: Backoff | None = None
) -> KubernetesDiscovery:
    """Start discovery; returns once the first list answered (or failed, or 15 s passed).

    Raises :class:`~quantroute.errors.ConfigError` when no Kubernetes credentials can be loaded.
    An unreachable API server is not fatal: discovery keeps retrying with backoff.
    """
    source = await KubeClient.create(cfg)
    discovery = KubernetesDiscovery(cfg, source, on_change, backoff)
    discovery.start()
    await discovery.wait_first_attempt(FIRST_LIST_WAIT_S)
    return discovery
