"""A tiny Kubernetes API server for pods, over real HTTP on loopback (aiohttp).

It serves what the discovery client uses: ``GET /api/v1/namespaces/{ns}/pods`` as a list and,
with ``watch=true``, as a stream of newline-delimited JSON events from a ``resourceVersion``,
replaying the history after it. Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``. As
the real API does, an object that stops matching a watch's selector arrives as DELETED, and a
watch from a version older than the compacted history gets an ERROR event with code 410.

The methods that change pods, drop watches or inject failures may be called from any thread.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Pod = dict[str, Any]


def parse_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """``a=b,c!=d,e,!f`` -> [(op, key, value)]; op in ``= != exists !exists``."""
    terms: list[tuple[str, str, str | None]] = []
    for raw in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif raw.startswith("!"):
            terms.append(("!exists", raw[1:].strip(), None))
        elif " " in raw or "(" in raw:
            raise ValueError(f"unsupported selector term {raw!r}")
        else:
            terms.append(("exists", raw, None))
    return terms


def matches(pod: Pod | None, terms: list[tuple[str, str, str | None]]) -> bool:
    if pod is None:
        return False
    labels = pod.get("metadata", {}).get("labels") or {}
    checks: dict[str, Callable[[str, str | None], bool]] = {
        "=": lambda k, v: labels.get(k) == v,
        "!=": lambda k, v: labels.get(k) != v,
        "exists": lambda k, _: k in labels,
        "!exists": lambda k, _: k not in labels,
    }
    return all(checks[op](key, value) for op, key, value in terms)


@dataclass
class _Change:
    rv: int
    namespace: str
    old: Pod | None
    new: Pod | None


@dataclass
class _Watcher:
    namespace: str | None
    terms: list[tuple[str, str, str | None]]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[_Change | None] = field(default_factory=asyncio.Queue)

    def event(self, change: _Change) -> dict[str, Any] | None:
        if self.namespace is not None and change.namespace != self.namespace:
            return None
        was, now = matches(change.old, self.terms), matches(change.new, self.terms)
        if now:
            return {"type": "MODIFIED" if was else "ADDED", "object": change.new}
        return {"type": "DELETED", "object": change.old} if was else None


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKube:
    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pods_route)
        self._lock = threading.Lock()
        self._rv = 100
        self._oldest = 0
        self._pods: dict[tuple[str, str], Pod] = {}
        self._history: list[_Change] = []
        self._watchers: list[_Watcher] = []
        self._failures: list[int] = []
        self.requests: list[dict[str, str]] = []
        self.expired_answers = 0
        self.leaky = False
        """Answer with every pod of every namespace, ignoring the path's namespace and the label
        selector (as a broken proxy in front of the API might): for the trust-boundary tests."""

    # -- control (any thread) --------------------------------------------------------------------
    def put(self, pod: Pod, *, notify: bool = True) -> int:
        """Create or replace a pod; ``notify=False`` changes it behind every watch's back."""
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        key = (meta.setdefault("namespace", "default"), meta["name"])
        with self._lock:
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            old = self._pods.get(key)
            self._pods[key] = pod
            if notify:
                self._record(_Change(self._rv, key[0], old, pod))
            return self._rv

    def delete(self, name: str, namespace: str = "default") -> None:
        with self._lock:
            old = self._pods.pop((namespace, name))
            self._rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record(_Change(self._rv, namespace, gone, None))

    def compact(self) -> None:
        """Forget the history: a watch from an older version than now gets 410 Gone."""
        with self._lock:
            self._history.clear()
            self._oldest = self._rv

    def drop_watches(self) -> None:
        """End every open watch stream (as an API server restart or a load balancer would)."""
        with self._lock:
            for watcher in self._watchers:
                watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, None)

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([status] * times)

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watchers)

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["kind"] == kind)

    def _record(self, change: _Change) -> None:  # holds the lock
        self._history.append(change)
        for watcher in self._watchers:
            watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, change)

    # -- HTTP ------------------------------------------------------------------------------------
    async def _pods_route(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        # apimachinery's query bool: anything but "", "0" and "false" (any case) is true.
        watching = query.get("watch", "").lower() not in ("", "0", "false")
        with self._lock:
            kind = "watch" if watching else "list"
            auth = request.headers.get("Authorization", "")
            self.requests.append({**query, "kind": kind, "authorization": auth})
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return web.json_response(_status(failure, "InternalError", "injected"), status=failure)
        try:
            terms = parse_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            return web.json_response(_status(400, "BadRequest", str(exc)), status=400)
        namespace: str | None = request.match_info["namespace"]
        if self.leaky:
            namespace, terms = None, []
        if watching:
            return await self._watch(request, namespace, terms, query)
        return web.json_response(self._list(namespace, terms))

    def _list(
        self, namespace: str | None, terms: list[tuple[str, str, str | None]]
    ) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self._pods.items())
                if namespace in (None, ns) and matches(p, terms)
            ]
            rv = str(self._rv)
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    async def _watch(
        self,
        request: web.Request,
        namespace: str | None,
        terms: list[tuple[str, str, str | None]],
        query: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watcher = _Watcher(namespace, terms, asyncio.get_running_loop())
        since = int(query.get("resourceVersion") or 0)
        with self._lock:
            if since < self._oldest:
                self.expired_answers += 1
                backlog: list[_Change] | None = None
            else:
                backlog = [c for c in self._history if c.rv > since]
                self._watchers.append(watcher)
        if backlog is None:
            error = _status(410, "Expired", f"too old resource version: {since} ({self._oldest})")
            await response.write(json.dumps({"type": "ERROR", "object": error}).encode() + b"\n")
            return response
        try:
            await self._follow(response, watcher, backlog, float(query.get("timeoutSeconds", 300)))
        finally:
            with self._lock:
                self._watchers.remove(watcher)
        return response

    async def _follow(
        self,
        response: web.StreamResponse,
        watcher: _Watcher,
        backlog: list[_Change],
        timeout_s: float,
    ) -> None:
        for queued in backlog:
            watcher.queue.put_nowait(queued)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                change = await asyncio.wait_for(watcher.queue.get(), remaining)
            except TimeoutError:
                return
            if change is None:
                return
            event = watcher.event(change)
            if event is not None:
                await response.write(json.dumps(event).encode() + b"\n")


def vllm_pod(
    name: str,
    *,
    port: int,
    variant: str = "llama3-8b-awq",
    model: str = "model-a",
    ip: str | None = "127.0.0.1",
    phase: str = "Running",
    ready: bool = True,
    deleting: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    without: tuple[str, ...] = (),
) -> Pod:
    """A pod as the API server would show one of deploy/'s vLLM pods; ``without`` drops keys."""
    all_labels = {"app.kubernetes.io/name": "vllm", "quantroute.io/role": "backend"}
    all_labels["quantroute.io/variant"] = variant
    all_annotations = {
        "quantroute.io/served-model-name": model,
        "quantroute.io/max-model-len": "8192",
        "quantroute.io/max-num-seqs": "16",
        "quantroute.io/quantization": "awq_marlin",
        "quantroute.io/gpu": "L40S",
        "quantroute.io/gpu-cost-per-hour": "1.20",
        "quantroute.io/port": str(port),
        "prometheus.io/scrape": "true",
    }
    all_labels.update(labels or {})
    all_annotations.update(annotations or {})
    for key in without:
        all_labels.pop(key, None)
        all_annotations.pop(key, None)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": f"uid-{name}",
        "labels": all_labels,
        "annotations": all_annotations,
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}
