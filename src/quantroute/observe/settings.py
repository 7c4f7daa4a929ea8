"""Whether and how to trace: the config's ``tracing`` section over the standard ``OTEL_*``
environment variables. Pure apart from reading the mapping it is given; imports no SDK.

Precedence: a field set in the config wins; an unset one is left to the SDK, which reads the
environment itself (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT +
``/v1/traces``; OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _COMPRESSION; OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; OTEL_BSP_* for the batch
processor; OTEL_PROPAGATORS, default ``tracecontext,baggage``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass

from quantroute.config import TracingConfig
from quantroute.errors import ConfigError

DEFAULT_SERVICE_NAME = "quantroute"
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_SUPPORTED_PROTOCOL = "http/protobuf"
INSTALL_HINT = "pip install 'quantroute[tracing]' (the image: scripts/build-image --extras tracing)"


@dataclass(frozen=True)
class TracingSettings:
    endpoint: str | None
    """None: the exporter reads the OTEL_* endpoint variables (default localhost:4318)."""
    service_name: str
    sample_ratio: float | None
    """None: the SDK's sampler from OTEL_TRACES_SAMPLER(_ARG), default parentbased_always_on."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _wanted(config: TracingConfig, env: Mapping[str, str]) -> tuple[bool, str]:
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return False, "OTEL_SDK_DISABLED=true"
    if config.enabled is not None:
        return config.enabled, "tracing.enabled in the config"
    if config.endpoint is not None:
        return True, "tracing.endpoint in the config"
    for name in _ENDPOINT_VARS:
        if env.get(name):
            return True, f"{name} in the environment"
    return False, "no OTLP endpoint configured"


def sdk_available() -> bool:
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:  # the parent package itself is absent
        return False


def resolve_tracing(
    config: TracingConfig, env: Mapping[str, str], *, available: bool | None = None
) -> TracingSettings | None:
    """None when tracing is off. Raises ConfigError when it is on but cannot work."""
    wanted, why = _wanted(config, env)
    if not wanted:
        return None
    if not (sdk_available() if available is None else available):
        raise ConfigError(
            f"tracing is on ({why}) but the OpenTelemetry SDK is not installed: "
            f"{INSTALL_HINT}, or set tracing.enabled: false"
        )
    for name in _PROTOCOL_VARS:
        protocol = env.get(name)
        if protocol and protocol.strip() != _SUPPORTED_PROTOCOL:
            raise ConfigError(
                f"tracing: {name}={protocol!r} is not supported; the gateway exports OTLP over "
                f"HTTP ({_SUPPORTED_PROTOCOL}, port 4318 on a collector)"
            )
        if protocol:
            break
    service = config.service_name or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    return TracingSettings(config.endpoint, service, config.sample_ratio)
