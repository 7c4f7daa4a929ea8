"""The one module that talks to ``kubernetes_asyncio``, whose generated code is not annotated.

Everything untyped stays here, behind :class:`KubeClient`: pods come out as plain JSON objects
(exactly what the API server sent), errors as :class:`KubeApiError` / :class:`ResourceExpired`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import cast

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from quantroute.config import KubernetesDiscoveryConfig
from quantroute.errors import ConfigError

JsonObject = Mapping[str, object]
LIST_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
READ_GRACE_S = 30.0


class KubeApiError(Exception):
    """The API server answered with an error (or garbage) instead of pods."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class ResourceExpired(KubeApiError):
    """410 Gone: the resourceVersion we watch from is too old; list again."""


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


def _from_api_exception(exc: ApiException) -> KubeApiError:
    status = cast(int | None, exc.status)
    return _api_error(status, str(cast(object, exc.reason)))


async def load_configuration(cfg: KubernetesDiscoveryConfig) -> client.Configuration:
    """``api_url`` (no auth), else an explicit kubeconfig, else in-cluster, else ~/.kube/config."""
    if cfg.api_url:
        return client.Configuration(host=cfg.api_url.rstrip("/"))
    configuration = client.Configuration()
    try:
        if cfg.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                config_file=cfg.kubeconfig, client_configuration=configuration
            )
    except (ConfigException, OSError) as exc:
        where = cfg.kubeconfig or "in-cluster service account / ~/.kube/config"
        raise ConfigError(
            f"discovery.kubernetes: cannot load Kubernetes credentials ({where}): {exc}"
        ) from None
    return configuration


class KubeClient:
    """List and watch the pods of one namespace that match one label selector."""

    def __init__(self, configuration: client.Configuration, cfg: KubernetesDiscoveryConfig) -> None:
        self._api_client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api_client)
        self._namespace = cfg.namespace
        self._selector = cfg.label_selector

    @classmethod
    async def create(cls, cfg: KubernetesDiscoveryConfig) -> KubeClient:
        return cls(await load_configuration(cfg), cfg)

    async def aclose(self) -> None:
        await self._api_client.close()

    async def list_pods(self) -> PodList:
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
            try:
                async for raw in events:
                    yield _pod_event(cast(object, raw))
            except ApiException as exc:
                raise _from_api_exception(exc) from None


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
