"""The one module that talks to ``kubernetes_asyncio`` (only partly typed: its generated client
has stubs, some config loaders and raw responses don't).

Everything library-shaped stays here, behind :class:`KubeClient`: pods come out as plain JSON
objects (exactly what the API server sent), errors as :class:`KubeApiError` /
:class:`ResourceExpired`, whatever layer (API, HTTP, socket) they came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.kube_config import KubeConfigLoader

from quantroute.config import KubernetesDiscoveryConfig
from quantroute.errors import ConfigError, KubeApiError, ResourceExpired

JsonObject = Mapping[str, object]
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
LIST_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
READ_GRACE_S = 30.0
TOKEN_REFRESH_S = 60.0
log = logging.getLogger("quantroute.discovery")


@dataclass(frozen=True)
class PodList:
    items: list[JsonObject]
    resource_version: str


@dataclass(frozen=True)
class PodEvent:
    type: str
    """ADDED, MODIFIED, DELETED, or BOOKMARK (which only moves the resourceVersion)."""
    pod: JsonObject
    resource_version: str | None


def _api_error(status: int | None, message: str) -> KubeApiError:
    return (ResourceExpired if status == 410 else KubeApiError)(status, message)


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """The client's and the transport's errors as :class:`KubeApiError`."""
    try:
        yield
    except ApiException as exc:
        raise _api_error(cast(int | None, exc.status), str(cast(object, exc.reason))) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise KubeApiError(None, f"{type(exc).__name__}: {exc}") from exc


def own_namespace(
    env: Mapping[str, str] = os.environ, namespace_file: str = SERVICE_ACCOUNT_NAMESPACE
) -> str:
    """The gateway pod's namespace: ``POD_NAMESPACE`` (the downward API), else the mounted service
    account's namespace file, else ``default`` (outside a cluster)."""
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        with open(namespace_file, encoding="utf-8") as file:
            namespace = file.read().strip()
        if namespace:
            return namespace
    return "default"


async def load_configuration(
    cfg: KubernetesDiscoveryConfig,
) -> tuple[client.Configuration, KubeConfigLoader | None]:
    """``api_url`` (no auth), else an explicit kubeconfig, else in-cluster, else ~/.kube/config.

    The kubeconfig loader comes back too: exec-plugin and GCP tokens expire and need refreshing.
    """
    if cfg.api_url:
        return client.Configuration(host=cfg.api_url.rstrip("/")), None
    configuration = client.Configuration()
    try:
        if cfg.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            # Refreshes the (projected, rotating) service account token by itself.
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration, None
        loader = await config.load_kube_config(
            config_file=cfg.kubeconfig, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError) as exc:
        where = cfg.kubeconfig or "in-cluster service account / ~/.kube/config"
        raise ConfigError(
            f"discovery.kubernetes: cannot load Kubernetes credentials ({where}): {exc}"
        ) from None
    return configuration, loader


async def _refresh_token(loader: KubeConfigLoader, configuration: client.Configuration) -> None:
    """The library's refresher (a no-op for static credentials), restarted when it fails."""
    while True:
        try:
            await config.refresh_token(loader, configuration, interval=TOKEN_REFRESH_S)
            return
        except Exception as exc:
            log.warning("discovery: refreshing the kubeconfig token failed: %s", exc)
            await asyncio.sleep(TOKEN_REFRESH_S)


class KubeClient:
    """List and watch the pods of one namespace that match one label selector."""

    def __init__(self, configuration: client.Configuration, cfg: KubernetesDiscoveryConfig) -> None:
        self._api_client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api_client)
        self._namespace = cfg.namespace or own_namespace()
        self._selector = cfg.label_selector
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, cfg: KubernetesDiscoveryConfig) -> KubeClient:
        configuration, loader = await load_configuration(cfg)
        kube = cls(configuration, cfg)
        if loader is not None:  # returns at once unless the user's token comes from exec or GCP
            refresh = _refresh_token(loader, configuration)
            kube._refresher = asyncio.create_task(refresh, name="quantroute-kube-token")
        return kube

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._api_client.close()

    async def list_pods(self) -> PodList:
        with _translated_errors():
            response = cast(
                aiohttp.ClientResponse,
                await self._core.list_namespaced_pod(
                    self._namespace,
                    label_selector=self._selector,
                    _preload_content=False,
                    _request_timeout=LIST_TIMEOUT_S,
                ),
            )
            async with response:
                body = await response.read()
        if not 200 <= response.status < 300:
            raise _api_error(response.status, body.decode(errors="replace")[:300])
        return _pod_list(body)

    async def watch_pods(
        self, resource_version: str, timeout_s: float
    ) -> AsyncGenerator[PodEvent, None]:
        """Events after ``resource_version`` until the server ends the stream (within ``timeout_s``)."""
        seconds = max(1, math.ceil(timeout_s))
        async with watch.Watch(return_type="object") as stream:
            events = stream.stream(
                self._core.list_namespaced_pod,
                self._namespace,
                label_selector=self._selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                _request_timeout=(CONNECT_TIMEOUT_S, seconds + READ_GRACE_S),
            )
            with _translated_errors():
                async for raw in events:
                    yield _pod_event(cast(object, raw))


def _pod_list(body: bytes) -> PodList:
    try:
        data: object = json.loads(body)
    except ValueError:
        raise KubeApiError(None, f"pod list is not JSON: {body[:120]!r}") from None
    if not isinstance(data, Mapping):
        raise KubeApiError(None, "pod list is not a JSON object")
    items = data.get("items") or []
    metadata = data.get("metadata")
    rv = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    if not isinstance(items, list) or not isinstance(rv, str):
        raise KubeApiError(None, "pod list without items or metadata.resourceVersion")
    return PodList([i for i in items if isinstance(i, Mapping)], rv)


def _pod_event(raw: object) -> PodEvent:
    """One decoded watch line (``Watch`` raised already for ERROR events); anything else is an error."""
    if not isinstance(raw, Mapping):
        raise KubeApiError(None, f"watch sent a non-event line: {str(raw)[:120]!r}")
    kind = raw.get("type")
    pod = raw.get("raw_object")
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK") or not isinstance(pod, Mapping):
        raise KubeApiError(None, f"unexpected watch event {str(raw)[:120]!r}")
    metadata = pod.get("metadata")
    rv = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    return PodEvent(kind, pod, rv if isinstance(rv, str) else None)
