"""The gateway's own credentials towards its backends (vLLM ``--api-key`` / ``VLLM_API_KEY``).

A client's ``Authorization`` never reaches a backend: the gateway sends the backend's key, or no
``Authorization`` at all when none is configured for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from quantroute.access.config import BackendCredential, UpstreamAuthConfig
from quantroute.errors import ConfigError

log = logging.getLogger("quantroute.access")


def _read(credential: BackendCredential, environ: Mapping[str, str], owner: str) -> str:
    if credential.api_key_env is not None:
        value = environ.get(credential.api_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"access.upstream_auth.{owner}: environment variable "
                f"{credential.api_key_env} is unset or empty"
            )
        return value
    assert credential.api_key_file is not None
    try:
        value = credential.api_key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"access.upstream_auth.{owner}: cannot read {credential.api_key_file}: {exc.strerror}"
        ) from None
    if not value:
        raise ConfigError(f"access.upstream_auth.{owner}: {credential.api_key_file} is empty")
    return value


class BackendCredentials:
    def __init__(
        self, config: UpstreamAuthConfig, environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self._default = None if config.default is None else _read(config.default, env, "default")
        self._per_backend = {
            backend_id: _read(cred, env, f"backends.{backend_id}")
            for backend_id, cred in config.backends.items()
        }

    def headers(self, backend_id: str) -> dict[str, str]:
        """Headers to send to ``backend_id``: its ``Authorization``, or none."""
        key = self._per_backend.get(backend_id, self._default)
        return {"Authorization": f"Bearer {key}"} if key else {}
