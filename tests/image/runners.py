"""Running a built image: as a container where the engine can start one, else from the image's
file system in a chroot, inside the namespaces and mounts a container would have.

Both give a test the same view, taken from the engine's record of the image (not the Dockerfile):
its entrypoint and command, user, environment and working directory; the host's network (the
gateway reaches a fake backend on 127.0.0.1) or a private one with loopback only; files mounted
read-only; the entrypoint as PID 1 (so SIGTERM reaches quantroute itself, as in a pod); and
``exec`` to run a command beside it. ``close()`` removes everything a start made.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from .images import TOOLS_HINT, Image, ImageTierUnavailable

Network = Literal["host", "private"]
CHROOT_TOOLS = ("unshare", "nsenter", "chroot", "mount", "ip")
DEVICES = ("null", "zero", "full", "random", "urandom")


@dataclass(frozen=True)
class Result:
    code: int
    output: str


class Instance(Protocol):
    def exec(self, argv: Sequence[str], timeout_s: float = 60.0) -> Result: ...
    def signal(self, signum: int) -> None: ...
    def wait(self, timeout_s: float) -> int: ...
    def alive(self) -> bool: ...
    def logs(self) -> str: ...
    def close(self) -> None: ...


class Runner(Protocol):
    description: str

    def start(
        self,
        image: Image,
        args: Sequence[str] = (),
        *,
        entrypoint: Sequence[str] | None = None,
        mounts: Mapping[Path, str] | None = None,
        network: Network = "host",
        env: Mapping[str, str] | None = None,
    ) -> Instance: ...


def run_once(
    runner: Runner, image: Image, argv: Sequence[str], mounts: Mapping[Path, str] | None = None
) -> Result:
    """``argv`` as the entrypoint of a fresh instance, to its end (60 s at most)."""
    instance = runner.start(image, entrypoint=argv, mounts=mounts)
    try:
        code = instance.wait(60.0)
        return Result(code, instance.logs())
    finally:
        instance.close()


def _run(
    argv: Sequence[str], timeout_s: float = 60.0, env: Mapping[str, str] | None = None
) -> Result:
    done = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        check=False,
        env=env,
    )
    return Result(done.returncode, done.stdout)


# -- containers (Docker, podman) ------------------------------------------------------------
@dataclass
class ContainerInstance:
    engine: list[str]
    name: str

    def exec(self, argv: Sequence[str], timeout_s: float = 60.0) -> Result:
        return _run([*self.engine, "exec", self.name, *argv], timeout_s)

    def signal(self, signum: int) -> None:
        _run([*self.engine, "kill", "--signal", str(signum), self.name])

    def wait(self, timeout_s: float) -> int:
        done = _run([*self.engine, "wait", self.name], timeout_s)
        return int(done.output.strip().splitlines()[-1])

    def alive(self) -> bool:
        fmt = "{{.State.Running}}"
        return _run([*self.engine, "inspect", "--format", fmt, self.name]).output.strip() == "true"

    def logs(self) -> str:
        return _run([*self.engine, "logs", self.name]).output

    def close(self) -> None:
        _run([*self.engine, "rm", "--force", self.name])


@dataclass
class ContainerRunner:
    engine: list[str]
    run_flags: list[str] = field(default_factory=list)
    description: str = ""

    def start(
        self,
        image: Image,
        args: Sequence[str] = (),
        *,
        entrypoint: Sequence[str] | None = None,
        mounts: Mapping[Path, str] | None = None,
        network: Network = "host",
        env: Mapping[str, str] | None = None,
    ) -> ContainerInstance:
        name = f"quantroute-test-{uuid.uuid4().hex[:12]}"
        argv = [*self.engine, "run", "--detach", "--name", name, "--no-healthcheck"]
        argv += ["--network", "host" if network == "host" else "none", *self.run_flags]
        for source, target in (mounts or {}).items():
            argv += ["--volume", f"{source}:{target}:ro"]
        for variable, value in (env or {}).items():
            argv += ["--env", f"{variable}={value}"]
        if entrypoint is not None:
            argv += ["--entrypoint", entrypoint[0]]
            args = [*entrypoint[1:], *args]
        started = _run([*argv, image.ref, *args], timeout_s=120.0)
        if started.code != 0:
            _run([*self.engine, "rm", "--force", name])
            raise RuntimeError(f"{' '.join(argv)} failed:\n{started.output}")
        return ContainerInstance(self.engine, name)

    def problem(self, image: Image) -> str | None:
        """Why this engine cannot start a container of ``image`` here, or None when it can."""
        instance = None
        try:
            instance = self.start(image, entrypoint=["/bin/sh", "-c", "exit 0"], network="private")
            code = instance.wait(60.0)
            return None if code == 0 else f"a container exited {code}: {instance.logs()[-300:]}"
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            return str(exc).strip().splitlines()[-1][-300:]
        finally:
            if instance is not None:
                instance.close()


def container_runners(engine: str) -> list[ContainerRunner]:
    """The ways to start a container with ``engine``, plainest first."""
    if engine != "podman":
        return [ContainerRunner([engine], description=f"{engine} containers")]
    runners = [ContainerRunner(["podman"], description="podman containers")]
    runc = shutil.which("runc")
    if runc:
        # Where crun cannot start a container (cgroup v1 hybrid hosts) and the sandbox may not
        # raise resource limits, runc starts one with the limits this process already has.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        flags = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
        runners.append(
            ContainerRunner(
                ["podman", "--runtime", runc],
                flags,
                "podman containers (runc; limits no higher than the host's)",
            )
        )
    return runners


# -- chroot --------------------------------------------------------------------------------
def _ids(image: Image, root: Path) -> tuple[int, int]:
    user, _, group = (image.user or "0").partition(":")
    if not user.isdigit():
        entry = _lookup(root / "etc" / "passwd", user)
        user, group = entry[2], group or entry[3]
    if group and not group.isdigit():
        group = _lookup(root / "etc" / "group", group)[2]
    return int(user), int(group or user)


def _lookup(table: Path, name: str) -> list[str]:
    for line in table.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise ValueError(f"{name} is not in the image's {table.name}")


def _setup_script(root: Path, mounts: Mapping[Path, str], private: bool) -> str:
    """What a container runtime would do before the entrypoint: /proc, devices, volumes, lo."""
    r = shlex.quote(str(root))
    lines = ["set -eu", f"mount -t proc proc {r}/proc"]
    for dev in DEVICES:
        lines.append(f"[ -e {r}/dev/{dev} ] || touch {r}/dev/{dev}")
        lines.append(f"mount --bind /dev/{dev} {r}/dev/{dev}")
    for source, target in mounts.items():
        t = shlex.quote(str(root) + target)
        lines.append(f"[ -e {t} ] || {{ mkdir -p $(dirname {t}); touch {t}; }}")
        lines.append(f"mount --bind {shlex.quote(str(source))} {t}")
        lines.append(f"mount -o remount,bind,ro {t}")
    if private:
        lines.append("ip link set lo up")
    return "\n".join(lines)


@dataclass
class ChrootInstance:
    podman: str
    container: str
    popen: subprocess.Popen[bytes]
    pid1: int
    uid: int
    gid: int
    env: dict[str, str]
    log: Path

    def exec(self, argv: Sequence[str], timeout_s: float = 60.0) -> Result:
        enter = [shutil.which("nsenter") or "nsenter", "--target", str(self.pid1)]
        enter += ["--mount", "--net", "--pid", "--root", "--wd"]
        enter += ["--setuid", str(self.uid), "--setgid", str(self.gid), "--"]
        return _run([*enter, *argv], timeout_s, env=self.env)

    def signal(self, signum: int) -> None:
        os.kill(self.pid1, signum)

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout_s)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)  # PID 1: its namespace goes with it
            self.popen.wait(30)
        _run([self.podman, "umount", self.container])
        _run([self.podman, "rm", "--force", self.container])


@dataclass
class ChrootRunner:
    podman: str
    work: Path
    description: str = (
        "chroot of the image's file system (podman mount), as PID 1 of new namespaces"
    )

    def start(
        self,
        image: Image,
        args: Sequence[str] = (),
        *,
        entrypoint: Sequence[str] | None = None,
        mounts: Mapping[Path, str] | None = None,
        network: Network = "host",
        env: Mapping[str, str] | None = None,
    ) -> ChrootInstance:
        name = f"quantroute-test-{uuid.uuid4().hex[:12]}"
        created = _run([self.podman, "create", "--name", name, image.ref])
        if created.code != 0:
            raise RuntimeError(f"podman create failed:\n{created.output}")
        try:
            return self._start(name, image, args, entrypoint, mounts or {}, network, env or {})
        except BaseException:
            _run([self.podman, "rm", "--force", name])
            raise

    def _start(
        self,
        name: str,
        image: Image,
        args: Sequence[str],
        entrypoint: Sequence[str] | None,
        mounts: Mapping[Path, str],
        network: Network,
        env: Mapping[str, str],
    ) -> ChrootInstance:
        root = Path(_run([self.podman, "mount", name]).output.strip().splitlines()[-1])
        uid, gid = _ids(image, root)
        if entrypoint is not None:
            command = [*entrypoint, *args]
        else:
            command = [*image.entrypoint, *(args or image.cmd)]
        setup = _setup_script(root, mounts, network == "private")
        chroot = f'exec chroot --userspec={uid}:{gid} --groups={gid} "$0" /bin/sh -c \'cd "$0" && exec "$@"\''
        unshare = shutil.which("unshare") or "unshare"
        argv = [unshare, "--mount", "--propagation", "private", "--pid", "--fork"]
        argv += ["--net"] if network == "private" else []
        script = f'{setup}\n{chroot} {shlex.quote(image.working_dir)} "$@"'
        argv += ["--", "/bin/sh", "-c", script, str(root), *command]
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            environ = {**image.env, **env}
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environ)
        pid1 = _child_of(popen)
        return ChrootInstance(self.podman, name, popen, pid1, uid, gid, environ, log)


def _child_of(popen: subprocess.Popen[bytes]) -> int:
    """The process `unshare --fork` started: PID 1 of the new namespace."""
    children = Path(f"/proc/{popen.pid}/task/{popen.pid}/children")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            found = children.read_text().split()
            if found:
                return int(found[0])
        if popen.poll() is not None:
            raise RuntimeError(f"unshare exited {popen.returncode} before its child started")
        time.sleep(0.02)
    raise RuntimeError("unshare started no child within 10 s")


def chroot_problem(engine: str) -> str | None:
    if engine != "podman":
        return "the chroot runner mounts images with podman"
    if os.geteuid() != 0:
        return "the chroot runner needs root (mounts, namespaces, chroot)"
    missing = [tool for tool in CHROOT_TOOLS if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}" if missing else None


def choose_runner(engine: str, image: Image, work: Path) -> tuple[Runner, list[str]]:
    """A container where one starts, else the chroot; QUANTROUTE_IMAGE_RUNNER=container|chroot
    picks one. Returns the runner and why the ones tried before it did not work."""
    forced = os.environ.get("QUANTROUTE_IMAGE_RUNNER")
    notes: list[str] = []
    if forced in (None, "", "container"):
        for runner in container_runners(engine):
            problem = runner.problem(image)
            if problem is None:
                return runner, notes
            notes.append(f"{runner.description}: {problem}")
    if forced in (None, "", "chroot"):
        problem = chroot_problem(engine)
        if problem is None:
            return ChrootRunner(shutil.which("podman") or "podman", work), notes
        notes.append(f"chroot: {problem}")
    raise ImageTierUnavailable(f"cannot run the image here ({TOOLS_HINT}): " + "; ".join(notes))


def probe_http(
    instance: Instance, port: int, paths: Sequence[str], bearer: str = ""
) -> dict[str, object]:
    """GET ``paths`` on 127.0.0.1:``port`` from inside the instance (its network, its python),
    with ``Authorization: Bearer <bearer>`` when one is given."""
    code = (
        "import json, sys, urllib.request, urllib.error\n"
        "out = {}\n"
        "auth = {'Authorization': 'Bearer ' + sys.argv[2]} if sys.argv[2] else {}\n"
        "for path in sys.argv[3:]:\n"
        "    request = urllib.request.Request(f'http://127.0.0.1:{sys.argv[1]}{path}', headers=auth)\n"
        "    try:\n"
        "        with urllib.request.urlopen(request, timeout=5) as r:\n"
        "            out[path] = [r.status, r.read().decode()]\n"
        "    except urllib.error.HTTPError as e:\n"
        "        out[path] = [e.code, e.read().decode()]\n"
        "    except OSError as e:\n"
        "        out[path] = [0, repr(e)]\n"
        "print(json.dumps(out))\n"
    )
    result = instance.exec(["python", "-c", code, str(port), bearer, *paths])
    if result.code != 0:
        return {path: [0, result.output] for path in paths}
    parsed: dict[str, object] = json.loads(result.output.strip().splitlines()[-1])
    return parsed
