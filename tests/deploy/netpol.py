"""NetworkPolicy semantics (ingress) over a model of pods and namespaces, for the manifest tests.

What Kubernetes specifies: a pod is isolated for ingress when a policy with policyType Ingress
selects it; then a connection is allowed when some rule of some such policy matches both the
peer (podSelector within the policy's namespace, namespaceSelector, or both together) and the
port (number or the pod's named port). ipBlock is not used by the shipped policies and is
rejected here rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


class Cluster:
    def __init__(self, namespaces: dict[str, dict[str, str]], pods: list[Pod]) -> None:
        # the API server labels every namespace with its name
        self.namespaces = {
            name: {**labels, "kubernetes.io/metadata.name": name}
            for name, labels in namespaces.items()
        }
        self.pods = {p.name: p for p in pods}

    def selected_by(self, policy: Obj) -> set[str]:
        ns = policy["metadata"]["namespace"]
        return {
            p.name
            for p in self.pods.values()
            if p.namespace == ns and selects(policy["spec"]["podSelector"], p.labels)
        }

    def _peer(self, peer: Obj, policy_ns: str, src: Pod) -> bool:
        assert "ipBlock" not in peer, "ipBlock is not modelled"
        pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
        if ns_sel is None:
            in_scope = src.namespace == policy_ns
        else:
            in_scope = selects(ns_sel, self.namespaces[src.namespace])
        return in_scope and (pod_sel is None or selects(pod_sel, src.labels))

    @staticmethod
    def _port(rule_port: Obj, dst: Pod, port: int) -> bool:
        if rule_port.get("protocol", "TCP") != "TCP":
            return False
        wanted = rule_port.get("port")
        if wanted is None:
            return True
        return wanted == port if isinstance(wanted, int) else dst.ports.get(wanted) == port

    def allowed(self, src: str, dst: str, port: int, policies: list[Obj]) -> bool:
        source, target = self.pods[src], self.pods[dst]
        isolating = [
            p
            for p in policies
            if "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and dst in self.selected_by(p)
        ]
        if not isolating:
            return True
        for policy in isolating:
            for rule in policy["spec"].get("ingress") or []:
                peers = rule.get("from")
                peer_ok = not peers or any(
                    self._peer(peer, policy["metadata"]["namespace"], source) for peer in peers
                )
                ports = rule.get("ports")
                port_ok = not ports or any(self._port(p, target, port) for p in ports)
                if peer_ok and port_ok:
                    return True
        return False
