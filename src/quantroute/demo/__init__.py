"""`quantroute demo`: the simulated fleet and the gateway in front of it, in one process.

Everything runs in one event loop: the simulated vLLM servers (loopback ports 8101-8105), the
gateway on 127.0.0.1:8080 and, with ``--traffic``, a mixed workload and a live terminal view.
Ctrl-C (or ``--duration``) stops all of it; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from importlib import resources
from pathlib import Path

from rich.console import Console

from quantroute.config import GatewayConfig, load_config
from quantroute.server.app import create_app
from quantroute.serving import EmbeddedServer, uvicorn_config
from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig, load_fleet_config

GATEWAY_FILE = "gateway.yaml"
EMBEDDING_BACKEND = SimBackendSpec(id="e5-mistral-7b", profile="e5-mistral-7b", port=8105)
"""Beside the packaged fleet: an embedding model, so the demo serves every API."""


def demo_fleet_config(time_scale: float) -> SimFleetConfig:
    fleet = load_fleet_config(None)
    backends = [*fleet.backends, EMBEDDING_BACKEND]
    return fleet.model_copy(update={"time_scale": time_scale, "backends": backends})


def demo_gateway_config(port: int) -> GatewayConfig:
    path = Path(str(resources.files("quantroute.demo") / GATEWAY_FILE))
    config = load_config(path)
    listen = config.listen.model_copy(update={"port": port})
    update: dict[str, object] = {"listen": listen}
    if config.matrix_path is not None and not config.matrix_path.exists():
        update["matrix_path"] = None
    return config.model_copy(update=update)


def _banner(console: Console, url: str, with_matrix: bool) -> None:
    console.print(
        f"[bold green]quantroute demo[/] gateway on [bold]{url}[/] in front of 5 simulated vLLM "
        "backends (4 chat models, 1 embedding model)"
    )
    console.print(
        f"""
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="demo")
  client.chat.completions.create(model="auto", messages=[{{"role": "user", "content": "Hello"}}])
  client.responses.create(model="auto", input="Hello")
  client.embeddings.create(model="auto", input="Hello")

  curl {url}/admin/backends        # what the router sees
  curl {url}/metrics               # its Prometheus metrics
  capability matrix: {"packaged (profiled on the simulator)" if with_matrix else "none: routing on live state alone"}
Ctrl-C stops everything."""
    )


async def run_demo(port: int, traffic: bool, time_scale: float, duration_s: float | None) -> None:
    console = Console()
    fleet_config = demo_fleet_config(time_scale)
    config = demo_gateway_config(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with SimFleet(fleet_config):
        app = create_app(config)
        settings = uvicorn_config(
            app, config.listen.host, port, "warning", http=app.state.http_protocol
        )
        server = EmbeddedServer(settings)
        serving = asyncio.create_task(server.serve())
        for _ in range(200):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.05)
        if not server.started:
            await serving
            raise SystemExit(f"gateway could not listen on 127.0.0.1:{port}")
        url = f"http://{config.listen.host}:{port}"
        _banner(console, url, config.matrix_path is not None)
        tasks: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
        if traffic:
            from quantroute.demo.live import drive_and_show

            tasks.append(asyncio.create_task(drive_and_show(url, app, console, time_scale)))
        timeout = duration_s if duration_s is not None else None
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            server.should_exit = True
            await serving
    console.print("[bold]demo stopped[/]: gateway and simulated backends are down.")


def demo_main(
    *,
    port: int = 8080,
    traffic: bool = False,
    time_scale: float = 1.0,
    duration_s: float | None = None,
) -> int:
    asyncio.run(run_demo(port, traffic, time_scale, duration_s))
    return 0
