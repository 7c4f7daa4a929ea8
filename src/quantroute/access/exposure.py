"""Refuse to serve an open gateway beyond this machine unless the config says it is meant to be."""

from __future__ import annotations

import ipaddress
import logging

from quantroute.config import GatewayConfig
from quantroute.errors import ConfigError

log = logging.getLogger("quantroute.access")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_exposure(config: GatewayConfig, host: str) -> None:
    """Raise :class:`ConfigError` for an open gateway on a non-loopback address; say at start-up
    which mode the gateway runs in."""
    access = config.access
    if access.keys_enabled:
        log.info("access control: API keys required (decision header: %s)", access.decision_header)
        return
    if is_loopback(host):
        return  # the app says at start-up that it runs without keys
    if not access.open:
        raise ConfigError(
            f"refusing to listen on {host} without API keys: anyone who can reach it could use "
            "the GPUs and read /admin. Configure access.keys or access.keys_file, or set "
            "access.open: true if this gateway is meant to be open."
        )
    log.warning(
        "no API keys configured and access.open is set: serving %s to anyone who can reach it", host
    )
