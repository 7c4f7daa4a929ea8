"""Config + OTEL_* environment -> whether and how the gateway traces."""

from __future__ import annotations

import pytest

from quantroute.config import TracingConfig
from quantroute.errors import ConfigError
from quantroute.observe.settings import TracingSettings, resolve_tracing

EP = "http://collector:4318/v1/traces"


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        ({}, {}, None),
        (
            {},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
            TracingSettings(None, "quantroute", None),
        ),
        ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": EP}, TracingSettings(None, "quantroute", None)),
        ({"endpoint": EP}, {}, TracingSettings(EP, "quantroute", None)),
        ({"enabled": True}, {}, TracingSettings(None, "quantroute", None)),
        ({"enabled": False}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"enabled": True}, {"OTEL_SDK_DISABLED": "true"}, None),
        ({"endpoint": EP}, {"OTEL_SDK_DISABLED": "TRUE"}, None),
        (
            {"enabled": True},
            {"OTEL_SDK_DISABLED": "false"},
            TracingSettings(None, "quantroute", None),
        ),
        ({"enabled": True}, {"OTEL_SERVICE_NAME": "gw-eu"}, TracingSettings(None, "gw-eu", None)),
        (
            {"enabled": True, "service_name": "cfg", "sample_ratio": 0.01},
            {"OTEL_SERVICE_NAME": "env"},
            TracingSettings(None, "cfg", 0.01),
        ),
        (
            {"enabled": True},
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            TracingSettings(None, "quantroute", None),
        ),
    ],
)
def test_resolution(config: dict[str, object], env: dict[str, str], expected: object) -> None:
    assert resolve_tracing(TracingConfig.model_validate(config), env, available=True) == expected


@pytest.mark.parametrize(
    ("config", "env", "why"),
    [
        ({"enabled": True}, {}, "tracing.enabled in the config"),
        ({"endpoint": EP}, {}, "tracing.endpoint in the config"),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_tracing_on_without_the_sdk_is_a_config_error_naming_cause_and_fix(
    config: dict[str, object], env: dict[str, str], why: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_tracing(TracingConfig.model_validate(config), env, available=False)
    message = str(exc.value)
    assert why in message
    assert "pip install 'quantroute[tracing]'" in message and "tracing.enabled: false" in message


def test_tracing_off_needs_no_sdk() -> None:
    assert resolve_tracing(TracingConfig(), {}, available=False) is None


def test_grpc_protocol_is_refused_clearly() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported"):
        resolve_tracing(TracingConfig(enabled=True), env, available=True)


def test_config_rejects_a_bad_ratio_and_endpoint() -> None:
    from quantroute.config import parse_config

    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio"):
        parse_config({"tracing": {"sample_ratio": 1.5}})
    with pytest.raises(ConfigError, match=r"tracing\.endpoint"):
        parse_config({"tracing": {"endpoint": "collector:4318"}})
