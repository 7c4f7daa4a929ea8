"""Discovery's trust boundary, checked on every pod the API returns (not only by the API server).

A pod is a candidate backend only when it is in the configured namespace and its labels match
the configured label selector. The API server already filters the list and the watch by both;
checking again here means a proxy in front of the API (``api_url``), an aggregated API or a bug
cannot add a backend outside that scope. Selector grammar as Kubernetes': ``k=v``, ``k==v``,
``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``, comma-separated (all must hold).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Labels = Mapping[str, str]
Term = Callable[[Labels], bool]
_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(selector):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return [t.strip() for t in terms if t.strip()]


def _term(raw: str) -> Term:
    found = _SET.match(raw)
    if found:
        key, op, values = found[1], found[2], {v.strip() for v in found[3].split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if "!=" in raw:
        key, value = (s.strip() for s in raw.split("!=", 1))
        return lambda labels: labels.get(key) != value
    if "=" in raw:
        key, value = (s.strip() for s in raw.replace("==", "=").split("=", 1))
        return lambda labels: labels.get(key) == value
    if raw.startswith("!"):
        key = raw[1:].strip()
        return lambda labels: key not in labels
    if " " in raw or "(" in raw:
        raise ValueError(f"unsupported label selector term {raw!r}")
    return lambda labels: raw in labels


def parse_selector(selector: str) -> Callable[[Labels], bool]:
    """A predicate over a pod's labels; ``ValueError`` for a term it cannot read."""
    terms = [_term(raw) for raw in _split(selector)]
    return lambda labels: all(term(labels) for term in terms)


def outside(
    metadata: Mapping[str, object], namespace: str, selector: Callable[[Labels], bool]
) -> str | None:
    """Why a pod is outside the discovery scope, or None when it is inside."""
    pod_ns = metadata.get("namespace")
    if pod_ns != namespace:
        return f"namespace {pod_ns!r} is not {namespace!r}"
    raw = metadata.get("labels")
    labels = (
        {str(k): v for k, v in raw.items() if isinstance(v, str)}
        if isinstance(raw, Mapping)
        else {}
    )
    if not selector(labels):
        return "labels do not match the selector"
    return None
