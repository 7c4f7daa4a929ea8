"""Building the images with scripts/build-image and reading what the engine says about them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-image"
CANNOT_BUILD_HERE = 75  # scripts/build-image's exit status when this machine cannot build
BUILD_TIMEOUT_S = 1800.0  # from nothing: a Debian base (1-3 min here), then pip over the network
TOOLS_HINT = "scripts/test installs them as root on Debian: apt-get install podman mmdebstrap runc"


class ImageTierUnavailable(Exception):
    """This machine cannot build or run the image; the message says why."""


class BuildFailed(Exception):
    """scripts/build-image ran and failed: a defect, never a reason to skip."""


@dataclass(frozen=True)
class Image:
    """One built image, as the engine reports it (not as the Dockerfile says)."""

    ref: str
    size: int
    user: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str] | None
    exposed_ports: list[str]
    working_dir: str
    base: str | None
    base_size: int | None

    @property
    def own_size(self) -> int | None:
        """Bytes of the image's own layers: everything above its Python base."""
        return None if self.base_size is None else self.size - self.base_size


def pick_engine() -> str:
    """docker when its engine answers, else podman; QUANTROUTE_IMAGE_ENGINE overrides."""
    wanted = os.environ.get("QUANTROUTE_IMAGE_ENGINE")
    if wanted:
        return wanted
    if shutil.which("docker") and _ok(["docker", "info"]):
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise ImageTierUnavailable(
        f"no container engine: no Docker engine answers and podman is not installed ({TOOLS_HINT})"
    )


def checkout_tag() -> str:
    """A tag of this checkout's own, so helpers in other worktrees never build over it."""
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
    return f"quantroute-test:{digest}"


def build(engine: str, target: str, tag: str, log: Path) -> tuple[str, float]:
    """Build ``target`` as ``tag``; return the image name and the seconds it took."""
    started = time.monotonic()
    argv = [str(BUILD_SCRIPT), "--engine", engine, "--target", target, "--tag", tag]
    with log.open("ab") as out:
        try:
            done = subprocess.run(
                argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=out, timeout=BUILD_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise BuildFailed(
                f"scripts/build-image ran over {BUILD_TIMEOUT_S:.0f} s; log {log}"
            ) from None
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    if done.returncode == CANNOT_BUILD_HERE:
        reason = [line for line in tail.splitlines() if "cannot build here" in line]
        raise ImageTierUnavailable((reason or [tail])[-1])
    if done.returncode != 0:
        raise BuildFailed(f"scripts/build-image exited {done.returncode}; log {log}:\n{tail}")
    names = done.stdout.decode().split()
    return names[-1], time.monotonic() - started


def inspect(engine: str, ref: str) -> Image:
    raw = _inspect_json(engine, ref)
    config: dict[str, Any] = raw.get("Config") or {}
    health = raw.get("Healthcheck") or config.get("Healthcheck")  # podman: top level
    labels = config.get("Labels") or {}
    base = labels.get("org.opencontainers.image.base.name")
    base_size = int(_inspect_json(engine, base)["Size"]) if base else None
    return Image(
        ref=ref,
        size=int(raw["Size"]),
        user=config.get("User", ""),
        env=dict(item.split("=", 1) for item in config.get("Env") or []),
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        healthcheck=list(health["Test"]) if health and health.get("Test") else None,
        exposed_ports=sorted(config.get("ExposedPorts") or {}),
        working_dir=config.get("WorkingDir") or "/",
        base=base,
        base_size=base_size,
    )


def _inspect_json(engine: str, ref: str) -> dict[str, Any]:
    out = subprocess.run(
        [engine, "image", "inspect", ref], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    found: dict[str, Any] = json.loads(out)[0]
    return found


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
