"""`quantroute simulate`: run a simulated fleet in the foreground until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import yaml
from rich.console import Console
from rich.table import Table

from quantroute.sim.fleet import SimFleet, SimFleetConfig, load_fleet_config


def _table(fleet: SimFleet) -> Table:
    table = Table(title=f"simulated vLLM fleet (time scale {fleet.config.time_scale:g}x)")
    table.add_column("backend")
    table.add_column("served model")
    table.add_column("url", no_wrap=True, min_width=len("http://127.0.0.1:65535"))
    table.add_column("max_model_len", justify="right")
    table.add_column("KV blocks", justify="right")
    for spec in fleet.config.backends:
        backend = fleet.backends[spec.id]
        table.add_row(
            spec.id,
            backend.identity.served_model_name,
            fleet.urls[spec.id],
            str(backend.identity.max_model_len),
            str(backend.engine.config.num_gpu_blocks),
        )
    return table


async def _serve(config: SimFleetConfig, console: Console) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # not on every platform
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with SimFleet(config) as fleet:
            console.print(_table(fleet))
            console.print("OpenAI base URLs: <url>/v1 (any API key). Ctrl-C stops.")
            await stop.wait()
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGTERM)


def simulate_main(config_path: str | None, time_scale: float | None, seed: int | None) -> int:
    """Run the fleet of `config_path` (default: the packaged fleet) until Ctrl-C or
    SIGTERM; `time_scale` and `seed` override the file's. Returns the exit code."""
    console = Console()
    try:
        config = _load(config_path, time_scale, seed)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # pydantic errors are ValueErrors
        console.print(f"[red]invalid simulator config {config_path or '(default)'}:[/red] {exc}")
        return 2
    try:
        asyncio.run(_serve(config, console))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # e.g. a port already in use
        console.print(f"[red]simulated fleet failed:[/red] {exc}")
        return 1
    console.print("simulated fleet stopped")
    return 0


def _load(config_path: str | None, time_scale: float | None, seed: int | None) -> SimFleetConfig:
    config = load_fleet_config(config_path)
    overrides: dict[str, float | int] = {}
    if time_scale is not None:
        overrides["time_scale"] = time_scale
    if seed is not None:
        overrides["seed"] = seed
    if not overrides:
        return config
    return SimFleetConfig.model_validate({**config.model_dump(), **overrides})
