"""Hot reload of the whole config file: on change (polled) and on SIGHUP.

The new file is validated first (the same loader as ``serve`` and ``check-config``). A bad file
leaves the running config in place, says why in one log line, and shows in
``quantroute_config_reloads_total{result="error"}`` and
``quantroute_config_last_reload_success``. A good one is handed to ``apply``, which swaps it in
for new requests (requests in progress finish on the config they started with) and returns notes
for the log (settings that need a restart, backends added and removed).

The file is polled by content, not by mtime alone, so a Kubernetes ConfigMap (a symlink swapped
under the mount) and an editor's rename-into-place are both seen.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from quantroute.config import GatewayConfig, load_config
from quantroute.errors import ConfigError
from quantroute.resilience.metrics import ResilienceMetrics

log = logging.getLogger("quantroute.reload")
Apply = Callable[[GatewayConfig], Sequence[str]]


class ConfigReloader:
    def __init__(
        self,
        path: str | Path,
        apply: Apply,
        metrics: ResilienceMetrics,
        *,
        validate: Callable[[GatewayConfig], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._apply = apply
        self._metrics = metrics
        self._validate = validate
        self._seen = self._fingerprint()

    def _fingerprint(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    def changed(self) -> bool:
        now = self._fingerprint()
        if now is None or now == self._seen:
            return False
        self._seen = now
        return True

    def reload(self, trigger: str) -> bool:
        """Load, validate and apply the file; False (and the old config kept) if it is bad."""
        try:
            config = load_config(self.path)
            if self._validate is not None:
                self._validate(config)
        except ConfigError as exc:
            self._metrics.reloads.labels("error").inc()
            self._metrics.reload_ok.set(0)
            detail = str(exc).replace("\n", " | ")
            log.error(
                "config reload (%s) rejected; keeping the running config: %s", trigger, detail
            )
            return False
        notes = self._apply(config)
        self._metrics.reloads.labels("ok").inc()
        self._metrics.reload_ok.set(1)
        log.warning("config reloaded (%s)%s", trigger, "".join(f"; {n}" for n in notes))
        return True

    async def watch(self, poll_s: Callable[[], float], enabled: Callable[[], bool]) -> None:
        """Poll the file every ``poll_s()`` seconds and reload it when it changed."""
        while True:
            await asyncio.sleep(poll_s())
            if not enabled() or not self.changed():
                continue
            try:
                self.reload("file changed")
            except Exception:  # a bug applying it must not end the watcher
                log.exception("config reload failed")
