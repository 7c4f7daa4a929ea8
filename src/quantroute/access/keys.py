"""API keys: loaded from the config, a keys file (a mounted Secret), or env / files per key; kept
only as SHA-256 digests; checked in constant time.

Lookup is by the digest of the presented key (a dict), then confirmed with
:func:`hmac.compare_digest`. Timing can at most reveal something about the *digest* of what an
attacker sent, never about a valid key: SHA-256 is one-way. The raw key of ``key_env`` /
``key_file`` is read once at load and not kept.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from quantroute.access.config import AccessConfig, ApiKeySpec, KeysFile, QuotaLimits
from quantroute.access.errors import InvalidApiKey, MissingApiKey, RevokedApiKey
from quantroute.errors import ConfigError

log = logging.getLogger("quantroute.access")
SHORT_KEY = 24
"""Raw keys shorter than this are accepted with a warning (``quantroute gen-key`` makes 43)."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a key's name and what it may do. Never holds the key."""

    name: str
    admin: bool
    models: frozenset[str]
    limits: QuotaLimits
    latency_class: str | None = None
    priority: int = 0
    """Order in the flow-control queue within a latency class (higher first)."""

    @property
    def any_model(self) -> bool:
        return "*" in self.models


OPEN = Principal(name="open", admin=True, models=frozenset({"*"}), limits=QuotaLimits())
"""The principal of every request when no key is configured (the demo, local use)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal
    revoked: bool


def bearer(headers: Mapping[str, str]) -> str | None:
    """The key a client presents: ``Authorization: Bearer KEY`` (what the OpenAI SDK sends),
    else ``x-api-key`` (Anthropic's clients)."""
    value = headers.get("authorization")
    if value is not None:
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None
    other = headers.get("x-api-key")
    return other.strip() or None if other is not None else None


def _secret(spec: ApiKeySpec, environ: Mapping[str, str], where: str) -> bytes:
    if spec.sha256 is not None:
        return bytes.fromhex(spec.sha256)
    if spec.key_env is not None:
        raw = environ.get(spec.key_env, "").strip()
        if not raw:
            raise ConfigError(
                f"{where}: key {spec.name!r}: environment variable {spec.key_env} is unset or empty"
            )
    else:
        assert spec.key_file is not None
        try:
            raw = spec.key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}: key {spec.name!r}: cannot read {spec.key_file}: {exc.strerror}"
            ) from None
        if not raw:
            raise ConfigError(f"{where}: key {spec.name!r}: {spec.key_file} is empty")
    if len(raw) < SHORT_KEY:
        log.warning(
            "API key %r is short (%d characters); use quantroute gen-key", spec.name, len(raw)
        )
    return digest(raw)


def _entries(
    specs: Iterable[ApiKeySpec], environ: Mapping[str, str], where: str
) -> dict[bytes, _Entry]:
    entries: dict[bytes, _Entry] = {}
    names: set[str] = set()
    for spec in specs:
        if spec.name in names:
            raise ConfigError(f"{where}: duplicate key name {spec.name!r}")
        names.add(spec.name)
        secret = _secret(spec, environ, where)
        if secret in entries:
            raise ConfigError(
                f"{where}: keys {entries[secret].principal.name!r} and {spec.name!r} are the same key"
            )
        principal = Principal(
            spec.name,
            spec.admin,
            frozenset(spec.models),
            spec.limits,
            spec.latency_class,
            spec.priority,
        )
        entries[secret] = _Entry(secret, principal, spec.revoked)
    return entries


def read_keys_file(path: Path) -> tuple[ApiKeySpec, ...]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read keys file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: keys file is not valid YAML: {exc}") from None
    if isinstance(data, list):  # `quantroute gen-key >> keys.yaml`, run once per key
        data = {"keys": data}
    try:
        return KeysFile.model_validate(data or {}).keys
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: invalid keys file at {where}: {first['msg']}") from None


class KeyStore:
    """The configured keys; :meth:`authenticate` maps a request's headers to a :class:`Principal`."""

    def __init__(self, config: AccessConfig, environ: Mapping[str, str] | None = None) -> None:
        self.enabled = config.keys_enabled
        self._config = config
        self._environ = os.environ if environ is None else environ
        self._mtime: float | None = None
        self._entries = self._load()

    def _load(self) -> dict[bytes, _Entry]:
        specs = list(self._config.keys)
        path = self._config.keys_file
        if path is not None:
            self._mtime = path.stat().st_mtime if path.exists() else None
            specs += read_keys_file(path)
        return _entries(specs, self._environ, str(path or "access.keys"))

    def maybe_reload(self) -> bool:
        """Re-read ``keys_file`` when it changed; a bad new file keeps the old keys and logs."""
        path = self._config.keys_file
        if path is None:
            return False
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        try:
            self._entries = self._load()
        except ConfigError as exc:
            self._mtime = mtime
            log.error("keeping the previous API keys: %s", exc)
            return False
        log.info("reloaded API keys from %s: %d key(s)", path, len(self._entries))
        return True

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        if not self.enabled:
            return OPEN
        presented = bearer(headers)
        if presented is None:
            raise MissingApiKey()
        wanted = digest(presented)
        entry = self._entries.get(wanted)
        if entry is None or not hmac.compare_digest(entry.digest, wanted):
            raise InvalidApiKey()
        if entry.revoked:
            raise RevokedApiKey()
        return entry.principal

    def names(self) -> list[dict[str, object]]:
        """What /admin may show about the keys: names and rights, never digests."""
        return [
            {
                "name": e.principal.name,
                "admin": e.principal.admin,
                "revoked": e.revoked,
                "models": sorted(e.principal.models),
                "limits": e.principal.limits.model_dump(exclude_none=True),
            }
            for e in sorted(self._entries.values(), key=lambda e: e.principal.name)
        ]
