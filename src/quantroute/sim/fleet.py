"""A simulated fleet: several backends, each its own uvicorn server on loopback.

`SimFleet` runs inside the current event loop (for async tests and the gateway's
demo); `run_fleet_in_thread` runs one in a background thread with its own loop (for
sync tests and scripts). Neither installs signal handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
import yaml
from pydantic import Field, model_validator

from quantroute.base import Clock, FrozenModel
from quantroute.serving import EmbeddedServer, uvicorn_config
from quantroute.sim.backend import BackendIdentity, SimBackend
from quantroute.sim.engine import Engine, EngineConfig
from quantroute.sim.metrics import SimMetrics, cache_config_labels
from quantroute.sim.oracle import AnswerKey, QualityOracle
from quantroute.sim.profiles import ProfileBook, load_profiles
from quantroute.sim.server import create_app

DEFAULT_FLEET_FILE = "default_fleet.yaml"
START_TIMEOUT_S = 10.0


class SimBackendSpec(FrozenModel):
    """One simulated backend: a profile and the vLLM arguments it is served with."""

    id: str = Field(min_length=1)
    profile: str
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    served_model_name: str | None = None
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.90, gt=0, le=1)
    num_gpu_blocks_override: int | None = Field(default=None, ge=1)
    enable_prefix_caching: bool = True
    enable_prompt_tokens_details: bool = False
    legacy_metric_names: bool = False
    # --runner: "auto" is the profile's own kind; "pooling" on a generative profile is
    # vLLM's `--runner pooling --convert embed` (embeddings of its hidden state).
    runner: Literal["auto", "generate", "pooling"] = "auto"
    # VLLM_ENABLE_RESPONSES_API_STORE=1: keep /v1/responses in this server's memory.
    responses_store: bool = False
    api_key: str | None = Field(default=None, min_length=1)
    """As vLLM's ``--api-key``: /v1/* answers 401 without ``Authorization: Bearer <key>``."""


class SimFleetConfig(FrozenModel):
    """A fleet: simulated seconds per wall second, the seed, and the backends."""

    time_scale: float = Field(default=1.0, gt=0)
    seed: int = 0
    backends: list[SimBackendSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SimFleetConfig:
        ids = [b.id for b in self.backends]
        if len(set(ids)) != len(ids):
            raise ValueError(f"backend ids must be unique, got {ids}")
        ports = [b.port for b in self.backends if b.port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"backend ports must be unique, got {ports}")
        book = load_profiles()
        for backend in self.backends:
            book.variant(backend.profile)  # KeyError names the known profiles
        return self


def load_fleet_config(path: str | Path | None = None) -> SimFleetConfig:
    """Load a fleet YAML file, or the packaged default fleet when `path` is None."""
    if path is None:
        from importlib import resources

        text = resources.files(__package__).joinpath(DEFAULT_FLEET_FILE).read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    return SimFleetConfig.model_validate(yaml.safe_load(text))


def _from_workloads(name: str) -> Any:
    try:
        workloads = importlib.import_module("quantroute.workloads")
    except ImportError:
        return {}
    factory = getattr(workloads, name, None)
    return {} if factory is None else factory()


def default_answer_key() -> AnswerKey:
    """`quantroute.workloads.answer_key()` when that module exists, else an empty key."""
    key: AnswerKey = _from_workloads("answer_key")
    return key


def default_wrong_answers() -> Mapping[str, str]:
    """`quantroute.workloads.wrong_answers()` when that module exists, else empty."""
    wrong: Mapping[str, str] = _from_workloads("wrong_answers")
    return wrong


def build_backend(
    spec: SimBackendSpec,
    *,
    time_scale: float,
    seed: int,
    answer_key: AnswerKey,
    book: ProfileBook | None = None,
    clock: Clock | None = None,
    wrong_answers: Mapping[str, str] | None = None,
) -> SimBackend:
    """Engine, metrics and oracle of one backend as `spec` describes it."""
    book = book or load_profiles()
    variant = book.variant(spec.profile)
    config = EngineConfig.from_profile(
        variant,
        book.gpu_of(variant),
        book.engine,
        max_model_len=spec.max_model_len,
        max_num_seqs=spec.max_num_seqs,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        num_gpu_blocks_override=spec.num_gpu_blocks_override,
        seed=seed,
        enable_prefix_caching=spec.enable_prefix_caching,
    )
    name = spec.served_model_name or spec.profile
    cache = cache_config_labels(
        block_size=config.block_size,
        num_gpu_blocks=config.num_gpu_blocks,
        num_gpu_blocks_override=spec.num_gpu_blocks_override,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        kv_bytes_per_token=variant.kv_bytes_per_token,
        max_model_len=config.max_model_len,
        enable_prefix_caching=spec.enable_prefix_caching,
    )
    metrics = SimMetrics(
        name,
        max_model_len=config.max_model_len,
        cache_config=cache,
        legacy_names=spec.legacy_metric_names,
    )
    oracle = QualityOracle(spec.profile, variant.quality, answer_key, seed, wrong_answers)
    runner = variant.runner if spec.runner == "auto" else spec.runner
    identity = BackendIdentity(
        spec.id,
        name,
        variant.model,
        config.max_model_len,
        runner=runner,
        embedding_dim=variant.embedding_dim or variant.attention_width,
        responses_store=spec.responses_store,
        prompt_tokens_details=spec.enable_prompt_tokens_details,
        api_key=spec.api_key,
    )
    return SimBackend(identity, Engine(config), metrics, oracle, time_scale=time_scale, clock=clock)


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only for sockets
    # created with it; without, the first chunk after the headers waits for a delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class SimFleet:
    """Every backend of `config` served on loopback for the duration of `async with`.

    Without `answer_key`, the packaged workloads' answer key and wrong answers are used
    (when `quantroute.workloads` exists); with one, `wrong_answers` defaults to none.
    """

    def __init__(
        self,
        config: SimFleetConfig,
        *,
        answer_key: AnswerKey | None = None,
        wrong_answers: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        if answer_key is None:
            answer_key = default_answer_key()
            wrong_answers = default_wrong_answers() if wrong_answers is None else wrong_answers
        book = load_profiles()
        self.backends: dict[str, SimBackend] = {
            spec.id: build_backend(
                spec,
                time_scale=config.time_scale,
                seed=config.seed,
                answer_key=answer_key,
                book=book,
                wrong_answers=wrong_answers,
            )
            for spec in config.backends
        }
        self.urls: dict[str, str] = {}
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None], socket.socket]] = []

    def received(self, backend_id: str) -> list[tuple[str, Any]]:
        """The request bodies ``backend_id`` received, oldest first (path, parsed JSON)."""
        return list(self.backends[backend_id].received)

    @property
    def engines(self) -> Mapping[str, Engine]:
        """Each backend's engine, by backend id (for tests and live views)."""
        return {bid: backend.engine for bid, backend in self.backends.items()}

    async def __aenter__(self) -> Self:
        try:
            for spec in self.config.backends:
                await self._start(spec)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start(self, spec: SimBackendSpec) -> None:
        sock = _bind(spec.host, spec.port)
        app = create_app(self.backends[spec.id])
        server = EmbeddedServer(uvicorn_config(app, spec.host, log_level="warning", drain_s=2))
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"sim-http-{spec.id}")
        self._servers.append((server, task, sock))
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError(f"simulated backend {spec.id} stopped during start-up")
                await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        self.urls[spec.id] = f"http://{spec.host}:{port}"

    async def aclose(self) -> None:
        """Abort every in-flight request, then stop every server."""
        for backend in self.backends.values():
            backend.close()
        for server, _, _ in self._servers:
            server.should_exit = True
        for server, task, sock in self._servers:
            try:
                await task
            except (Exception, SystemExit):  # uvicorn exits via SystemExit on start-up failure
                server.force_exit = True
            finally:
                sock.close()
        self._servers.clear()


class FleetHandle:
    """A fleet running in a background thread; `stop()` (or leaving `with`) ends it."""

    def __init__(
        self,
        config: SimFleetConfig,
        answer_key: AnswerKey | None,
        wrong_answers: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.urls: dict[str, str] = {}
        self.backends: dict[str, SimBackend] = {}
        """Each backend (e.g. its ``authorizations``: read them from the test's thread)."""
        self._answer_key = answer_key
        self._wrong_answers = wrong_answers
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._fleet: SimFleet | None = None
        self._thread = threading.Thread(target=self._main, name="sim-fleet", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        fleet = SimFleet(
            self.config, answer_key=self._answer_key, wrong_answers=self._wrong_answers
        )
        async with fleet:
            self.urls = dict(fleet.urls)
            self._fleet = fleet
            self.backends = dict(fleet.backends)
            self._ready.set()
            await self._stop.wait()

    def received(self, backend_id: str) -> list[tuple[str, Any]]:
        """The request bodies ``backend_id`` received, oldest first (path, parsed JSON)."""
        if self._fleet is None:
            raise RuntimeError("the fleet is not running")
        return self._fleet.received(backend_id)

    def start(self, timeout: float = START_TIMEOUT_S * 2) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulated fleet did not start in time")
        if self._error is not None:
            raise RuntimeError("simulated fleet failed to start") from self._error

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every backend and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("simulated fleet did not stop in time")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_fleet_in_thread(
    config: SimFleetConfig,
    *,
    answer_key: AnswerKey | None = None,
    wrong_answers: Mapping[str, str] | None = None,
) -> FleetHandle:
    """Start `config`'s fleet in a background thread; returns once every backend listens.
    `answer_key` and `wrong_answers` as for `SimFleet`."""
    handle = FleetHandle(config, answer_key, wrong_answers)
    handle.start()
    return handle
