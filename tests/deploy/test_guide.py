"""The operations guide (deploy/README.md) does what it says.

- its ``quantroute`` and ``kubectl kustomize`` commands run and exit 0;
- its ``curl`` commands run against the real gateway on loopback, in the situation their step is
  about, and show what the guide says they show;
- every other ``kubectl`` (and ``helm``) command is checked against the rendered overlay: the
  namespace, the objects, containers, ports and label selectors it names exist;
- every link and every alert's ``runbook_url`` lands on a heading.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from quantroute import __version__
from quantroute.config import parse_config
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

from .guide import Command, anchors, commands, links
from .helpers import (
    ADAPTER_VALUES,
    DEPLOY,
    GUIDE,
    RULES_FILE,
    Obj,
    adapter_rules,
    copy_deploy,
    find,
    labels_match,
    pod_templates,
    render,
    render_overlay,
    tool,
    with_components,
)

NAMESPACE = "quantroute"
OVERLAY = "default"
GUIDE_PORT = "127.0.0.1:8080"
GUIDE_METRICS_PORT = "127.0.0.1:9090"
GUIDE_KEY = "qr-guide-admin-key-0123456789abcdefghijkl"
"""The gateway of the scenes runs with keys, /metrics on its own port, as components/access."""
RUNBOOK_BASE = "https://github.com/quantroute/quantroute/blob/main/deploy/README.md#"
LOCAL = ("quantroute", "kubectl kustomize")
KINDS = {
    "deploy": "Deployment",
    "svc": "Service",
    "hpa": "HorizontalPodAutoscaler",
    "configmap": "ConfigMap",
    "pdb": "PodDisruptionBudget",
}


def guide_commands() -> list[Command]:
    found = commands()
    assert len(found) > 40, "the operations guide lost its commands"
    return found


def _is_local(command: Command) -> bool:
    return command.text.startswith(LOCAL)


# -- links and runbook URLs ------------------------------------------------------------------


def test_every_link_of_the_guide_lands_somewhere() -> None:
    here = anchors()
    for target in links():
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        file = (GUIDE.parent / path).resolve() if path else GUIDE
        assert file.exists(), target
        if anchor:
            assert anchor in (anchors(file) if path else here), target


def test_every_alert_has_a_runbook_in_the_guide() -> None:
    here = anchors()
    rules = yaml.safe_load(RULES_FILE.read_text())["groups"]
    alerts = [rule for group in rules for rule in group["rules"]]
    assert alerts
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url == RUNBOOK_BASE + rule["alert"].lower()
        assert url.removeprefix(RUNBOOK_BASE) in here


# -- commands that run here ------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Where the guide's local commands run: a copy of the repository's deploy/ (as shipped),
    and one with the matrix enabled as "Rotate the capability matrix" shows."""
    shipped = tmp_path_factory.mktemp("shipped")
    copy_deploy(shipped)
    matrix = tmp_path_factory.mktemp("matrix")
    with_components(copy_deploy(matrix), OVERLAY, ("matrix",))
    return {"shipped": shipped, "matrix": matrix}


@pytest.mark.parametrize(
    "command", [c for c in commands() if _is_local(c)], ids=lambda c: c.text[:60]
)
def test_local_commands_of_the_guide_run(
    command: Command, workdirs: dict[str, Path], tmp_path: Path
) -> None:
    where = workdirs["matrix" if command.section == "Rotate the capability matrix" else "shipped"]
    text = command.text.replace("/tmp/", f"{tmp_path}/")
    env = {
        "PATH": f"{Path(tool('quantroute')).parent}:{Path(tool('kubectl')).parent}:/usr/bin:/bin"
    }
    result = subprocess.run(
        ["bash", "-c", text], cwd=where, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, f"{text}\n{result.stdout}\n{result.stderr}"
    assert result.stdout or "> " in text


# -- kubectl commands, checked against the rendered overlay -----------------------------------


@dataclass
class Cluster:
    """The rendered overlay, as the guide's kubectl commands would find it."""

    objs: list[Obj]

    def get(self, kind: str, name: str) -> Obj:
        found = find(self.objs, kind, name)
        assert found, f"no {kind} {name} in overlays/{OVERLAY}"
        return found[0]

    def selects_pods(self, selector: str) -> bool:
        pairs = dict(term.split("=", 1) for term in selector.split(","))
        return any(
            labels_match(pairs, t["metadata"]["labels"]) for _, t in pod_templates(self.objs)
        )


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _object(cluster: Cluster, ref: str) -> Obj:
    short, _, name = ref.partition("/")
    return cluster.get(KINDS[short], name)


def check_kubectl(cluster: Cluster, argv: list[str]) -> None:
    assert argv[0] == "kubectl"
    namespace = _option(argv, "-n", "--namespace")
    verb = next(a for a in argv[1:] if not a.startswith("-") and a != namespace)
    rest = argv[argv.index(verb) + 1 :]
    if verb in ("drain", "uncordon", "cordon"):
        assert namespace is None
        if verb == "drain":
            # The weights' emptyDir: drain refuses such pods without it.
            assert "--delete-emptydir-data" in rest and "--ignore-daemonsets" in rest
        return
    if verb == "create" and rest[0] == "namespace":
        assert rest[1] == NAMESPACE
        return
    if verb in ("apply", "diff") and "-k" in rest:  # the overlay sets the namespace
        assert namespace is None
        objs = render(DEPLOY.parent / rest[rest.index("-k") + 1])
        assert {o["metadata"].get("namespace", NAMESPACE) for o in objs} == {NAMESPACE}
        return
    assert namespace == NAMESPACE, argv
    if verb == "apply" and rest[0] == "edit-last-applied":
        deployment = _object(cluster, rest[1])
        hpa = [
            h
            for h in find(cluster.objs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        ]
        assert hpa, "only HPA-scaled Deployments lost replicas:"
        return
    if verb == "create" and rest[:2] == ["secret", "generic"]:
        from_file = _option(rest, "--from-file")
        if from_file is not None:  # a file the pods mount (components/access: keys.yaml)
            mounted = {
                v["secret"]["secretName"]
                for _, t in pod_templates(cluster.objs)
                for v in t["spec"].get("volumes", [])
                if "secret" in v
            }
            assert rest[2] in mounted
            return
        key = _option(rest, "--from-literal")
        assert key is not None
        wanted = {(rest[2], key.split("=", 1)[0])}
        refs = {
            (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for _, t in pod_templates(cluster.objs)
            for c in t["spec"]["containers"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert wanted <= refs
        return
    if verb == "delete":  # leftovers of older releases: they must be gone from the manifests
        assert not find(cluster.objs, KINDS[rest[0]], rest[1])
        return
    if verb == "rollout":
        assert rest[0] in ("status", "history", "undo")
        _object(cluster, rest[1])
        return
    if verb == "logs":
        deployment = _object(cluster, rest[0])
        name = _option(rest, "-c")
        spec = deployment["spec"]["template"]["spec"]
        if name is not None:
            names = {c["name"] for c in [*spec.get("initContainers", []), *spec["containers"]]}
            assert name in names
        return
    if verb == "port-forward":
        service = _object(cluster, rest[0])
        remote = int(rest[1].split(":")[1])
        assert remote in {p["port"] for p in service["spec"]["ports"]}
        return
    if verb == "patch":
        kind, name = KINDS[rest[0]], rest[1]
        patched = json.loads(json.dumps(cluster.get(kind, name)))
        change = json.loads(_option(rest, "-p") or "{}")
        assert _option(rest, "--type") == "merge"
        for key, value in change["spec"].items():
            assert key in patched["spec"]
            patched["spec"][key] = value
        kubernetes_validate.validate(patched, "1.32", strict=True)
        return
    if verb == "get":
        what = rest[0]
        selector = _option(rest, "-l")
        if what == "endpointslices":
            assert selector is not None and selector.startswith("kubernetes.io/service-name=")
            cluster.get("Service", selector.split("=", 1)[1])
        elif what == "pods" and selector is not None:
            assert cluster.selects_pods(selector), selector
        else:
            assert what in ("pods", "hpa")
        return
    pytest.fail(f"no rule checks this command of the guide: {' '.join(argv)}")


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster(render_overlay(OVERLAY))


@pytest.mark.parametrize(
    "command",
    [c for c in commands() if c.text.startswith("kubectl") and not _is_local(c)],
    ids=lambda c: c.text[:70],
)
def test_kubectl_commands_of_the_guide_name_what_the_overlay_has(
    command: Command, cluster: Cluster
) -> None:
    check_kubectl(cluster, command.argv)


def test_the_helm_command_passes_the_adapter_values() -> None:
    (helm,) = [c for c in guide_commands() if c.text.startswith("helm")]
    argv = helm.argv
    values = DEPLOY.parent / argv[argv.index("-f") + 1]
    assert values == ADAPTER_VALUES
    assert "--reuse-values" in argv  # keeps the release's own (resource) rules
    assert yaml.safe_load(values.read_text())["rules"]["custom"] == adapter_rules()


def test_every_command_of_the_guide_is_run_or_checked() -> None:
    kinds = {c.text.split()[0] for c in guide_commands()}
    assert kinds == {"quantroute", "kubectl", "curl", "helm"}


def test_the_check_rules_refuse_a_wrong_command(cluster: Cluster) -> None:
    for wrong in (
        "kubectl -n quantroute rollout status deploy/vllm-llama3-70b",
        "kubectl -n default get pods",
        "kubectl -n quantroute logs deploy/vllm-llama3-8b-awq -c sidecar",
        "kubectl -n quantroute port-forward svc/quantroute-gateway 8080:9999",
        "kubectl -n quantroute get pods -l quantroute.io/variant=llama3-8b",
        "kubectl drain gpu-node-7 --ignore-daemonsets",
        """kubectl -n quantroute patch hpa vllm-llama3-70b-awq --type merge -p '{"spec": {"minReplica": 2}}'""",
    ):
        with pytest.raises((AssertionError, kubernetes_validate.ValidationError)):
            check_kubectl(cluster, Command("", wrong, None).argv)


# -- curl commands, against the real gateway ---------------------------------------------------


@dataclass
class Scene:
    gateway: GatewayThread
    kind: str

    def run(self, command: Command) -> str:
        tool("curl")
        tool("jq")
        text = command.text.replace(GUIDE_PORT, f"127.0.0.1:{self.gateway.port}")
        text = text.replace(GUIDE_METRICS_PORT, f"127.0.0.1:{self.gateway.metrics_port}")
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", text],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "QR_KEY": GUIDE_KEY},  # the admin key the guide's curls send
        )
        assert result.returncode == 0, f"{text}\n{result.stdout}\n{result.stderr}"
        return result.stdout


@pytest.fixture
def scene(request: pytest.FixtureRequest) -> Iterator[Scene]:
    """Two variants behind the gateway, in the state the parameter names:
    healthy: both fresh and idle; full: `a` with a full KV cache, `b` failing its scrapes;
    dark: both failing their scrapes; refusing: both fresh, both answering requests with 503
    (vLLM overloaded or shutting down); unreachable: both fresh, both dropping the connection of
    every request (an engine gone while /metrics still answers)."""
    state: str = request.param
    states = {
        "healthy": (FakeState(served_model_name="a"), FakeState(served_model_name="b")),
        "full": (
            FakeState(served_model_name="a", kv_usage=0.97),
            FakeState(served_model_name="b", metrics_status=500),
        ),
        "dark": (
            FakeState(served_model_name="a", metrics_status=500),
            FakeState(served_model_name="b", metrics_status=500),
        ),
        "refusing": (
            FakeState(served_model_name="a", fail_status=503, fail_times=1000),
            FakeState(served_model_name="b", fail_status=503, fail_times=1000),
        ),
        "unreachable": (
            FakeState(served_model_name="a", drop_requests=True),
            FakeState(served_model_name="b", drop_requests=True),
        ),
    }[state]
    servers = [ThreadedServer(FakeBackend(s).app).start() for s in states]
    config = parse_config(
        {
            "backends": [
                {
                    "id": name,
                    "url": s.url,
                    "served_model_name": name,
                    "max_seq_len": 8192,
                    "capacity": 64,
                }
                for name, s in zip("ab", servers, strict=True)
            ],
            "groups": [{"name": "auto", "variants": ["a", "b"]}],
            "policy": {
                "scrape_interval_s": 0.1,
                "down_after_failures": 2,
                # a fleet without fresh metrics answers 503 only when it fails closed (the
                # runbook says so); the default, fail_open, routes on the gateway's own account
                **({"metrics_outage": "fail_closed"} if state == "dark" else {}),
                # the runbook's 503 at once: a saturated group would otherwise queue the request
                "flow_control": {"on_saturation": "reject"},
            },
            "access": {
                "keys": [
                    {
                        "name": "ops",
                        "sha256": hashlib.sha256(GUIDE_KEY.encode()).hexdigest(),
                        "models": ["*"],
                        "admin": True,
                    }
                ],
                "metrics_port": 9090,
            },
        }
    )
    try:
        with GatewayThread(config) as gateway:
            expected = {"full": {"fresh", "down"}, "dark": {"down"}}.get(state, {"fresh"})
            assert wait_until(
                lambda: (
                    {
                        r["state"]
                        for r in httpx.get(
                            gateway.url + "/admin/backends",
                            headers={"Authorization": f"Bearer {GUIDE_KEY}"},
                        ).json()["backends"]
                    }
                    == expected
                ),
                10.0,
            )
            yield Scene(gateway, state)
    finally:
        for server in servers:
            server.stop()


def curls(section: str, step: str | None = None) -> list[Command]:
    found = [
        c
        for c in guide_commands()
        if c.text.startswith("curl") and c.section == section and (step is None or c.step == step)
    ]
    assert found, (section, step)
    return found


@pytest.mark.parametrize("scene", ["healthy"], indirect=True)
def test_trying_it_upgrading_and_scaling_show_the_backends_and_the_version(scene: Scene) -> None:
    models, chat, backends = (scene.run(c) for c in curls("Try it"))
    assert {m["id"] for m in json.loads(models)["data"]} >= {"auto", "a", "b"}
    assert json.loads(chat)["choices"][0]["message"]["content"]
    assert sorted(line.split()[:2] for line in backends.splitlines()) == [
        ["a", "fresh"],
        ["b", "fresh"],
    ]
    (build,) = [scene.run(c) for c in curls("Upgrade")]
    assert 'quantroute_build_info{python_version="' in build
    assert f'version="{__version__}"' in build
    (scaled,) = [scene.run(c) for c in curls("Scale a variant")]
    assert [line.split()[1:] for line in scaled.splitlines()] == [["fresh", "0"], ["fresh", "0"]]


REASON_TABLE = GUIDE.read_text().split("| reason | means | do |")[1].split("**3.")[0]


def _documented(reason: str) -> bool:
    """Whether the reason table of step 2 has a row starting like this reason."""
    head = reason.split(" ")[0] + (
        " " + reason.split(" ")[1] if reason.startswith("kv_ceiling") else ""
    )
    return f"`{head}" in REASON_TABLE


@pytest.mark.parametrize("scene", ["full", "dark"], indirect=True)
def test_the_503_runbook_shows_who_answered_and_why(scene: Scene) -> None:
    (first,) = [scene.run(c) for c in curls("Why did this request get a 503 or a 502", "1")]
    head, _, body = first.partition("\n\n")  # (universal newlines: \r\n read as \n)
    assert head.startswith("HTTP/1.1 503")
    assert "retry-after: 1" in head.lower()
    assert json.loads(body)["error"]["code"] == "no_backend_available"

    reasons, explained = (
        scene.run(c) for c in curls("Why did this request get a 503 or a 502", "2")
    )
    by_backend = json.loads(reasons)
    assert set(by_backend) == {"a", "b"}
    for backend_reasons in by_backend.values():
        assert backend_reasons and all(_documented(r) for r in backend_reasons), backend_reasons
    decision = json.loads(explained)
    assert decision["outcome"] == "no_backend" and decision["group"] == "auto"
    assert {c["backend"]: c["reasons"] for c in decision["candidates"]} == by_backend

    admin, metrics = (scene.run(c) for c in curls("Why did this request get a 503 or a 502", "3"))
    rows = [json.loads(chunk) for chunk in re.split(r"(?<=\})\n(?=\{)", admin.strip())]
    assert {r["id"] for r in rows} == {"a", "b"}
    down = [r for r in rows if r["state"] == "down"]
    assert down and all(r["last_error"] for r in down)
    assert "quantroute_no_backend_total" in metrics
    assert 'quantroute_backend_up{backend="b",state="down"} 1.0' in metrics

    (ready,) = [scene.run(c) for c in curls("Why did this request get a 503 or a 502", "5")]
    fresh = [r["id"] for r in rows if r["state"] == "fresh"]
    # with keys on, /ready (a public route) counts the fresh backends without naming them; the
    # replica stays ready without fresh metrics, and says so
    assert json.loads(ready) == {
        "ready": True,
        "draining": False,
        "fresh_backends": len(fresh),
        "metrics_outage": not fresh,
        "metrics_outage_mode": "fail_closed" if not fresh else "fail_open",
    }


def test_the_reason_table_covers_every_filter() -> None:
    for reason in (
        "health: backend is stale",
        "kv_ceiling: usage 0.97 >= ceiling 0.95",
        "kv_ceiling: KV-cache usage unknown (no usage metric scraped)",
        "kv_pressure: predicted usage 0.90 > threshold 0.85",
        "context: prompt 9000 + max_tokens exceeds 8192",
        "quality: coding quality 0.62 below floor 0.70",
    ):
        assert _documented(reason), reason
    assert not _documented("frobnicated: yes")


@pytest.mark.parametrize("scene", ["refusing", "unreachable"], indirect=True)
def test_the_first_step_tells_a_backends_answer_from_the_gateways(scene: Scene) -> None:
    """Rows 2 and 3 of step 1: a 502 the gateway made, and a vLLM server's own 503 relayed."""
    (first,) = [scene.run(c) for c in curls("Why did this request get a 503 or a 502", "1")]
    head, _, body = first.partition("\n\n")
    headers = head.lower()
    if "x-quantroute-backend" in headers:  # refusing: vLLM's answer, relayed after one retry
        assert head.startswith("HTTP/1.1 503")
        assert "x-quantroute-decision:" in headers
        assert "no_backend_available" not in body
    else:  # unreachable: the gateway's 502; its log line (not the body) names each attempt
        assert head.startswith("HTTP/1.1 502")
        error = json.loads(body)["error"]
        assert error["code"] == "upstream_unavailable"
        assert error["request_id"] in error["message"] and "a:" not in error["message"]
        assert f"x-request-id: {error['request_id']}" in headers
    assert ("x-quantroute-backend" in headers) == (scene.kind == "refusing")
