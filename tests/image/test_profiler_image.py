"""The profiler image (target `profiler`): the gateway's package plus the profiler extra, running
`quantroute profile` against a backend on loopback and `matrix plot`, as its own user."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from quantroute.testing.fake_backend import FakeState, ThreadedServer

from .conftest import Tier
from .images import ROOT, Image
from .runners import run_once

MATRIX = ROOT / "src" / "quantroute" / "demo" / "capability_matrix.json"


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)  # uid 10001 reads it through the mount
    return path


def test_profiler_image_profiles_a_backend_and_plots_a_matrix(
    tier: Tier,
    profiler_image: Image,
    backend: tuple[ThreadedServer, FakeState],
    tmp_path: Path,
) -> None:
    image = profiler_image
    assert image.user == "10001:10001" and image.entrypoint == ["quantroute"]
    assert image.own_size is not None
    tier.report.facts["profiler image size"] = f"{image.own_size / 1e6:.1f} MB above the base"
    helped = run_once(tier.runner, image, [*image.entrypoint, *image.cmd])
    assert helped.code == 0 and "--config" in helped.output, helped.output

    server, state = backend
    config = yaml.safe_load((ROOT / "deploy" / "docker" / "gateway.yaml").read_text())
    config["backends"][0]["url"] = server.url
    config_file = _written(tmp_path / "gateway.yaml", yaml.safe_dump(config))
    profile = (
        "quantroute profile --config /work/gateway.yaml -o /tmp/m.json --quiet"
        " --samples-per-task 2 --concurrency 1 --rounds 1 && cat /tmp/m.json"
    )
    profiled = run_once(
        tier.runner,
        image,
        ["/bin/sh", "-c", profile],
        mounts={config_file: "/work/gateway.yaml"},
    )
    assert profiled.code == 0, profiled.output
    lines = profiled.output.splitlines()
    matrix = json.loads("\n".join(lines[lines.index("{") :]))
    variant = matrix["variants"]["llama3-8b-awq"]
    assert variant["error"] is None and variant["ttft_ms"]["n"] == 8  # 2 samples x 4 tasks
    assert len(state.received) >= 8 + 16  # graded phase, then one sweep level of 16

    plot = (
        "quantroute matrix plot /work/matrix.json -o /tmp/m.png"
        " && python -c \"print(open('/tmp/m.png', 'rb').read(8))\""
    )
    plotted = run_once(
        tier.runner, image, ["/bin/sh", "-c", plot], mounts={MATRIX: "/work/matrix.json"}
    )
    assert plotted.code == 0 and "b'\\x89PNG\\r\\n\\x1a\\n'" in plotted.output, plotted.output
