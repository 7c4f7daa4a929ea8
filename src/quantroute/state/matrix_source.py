"""Load the capability matrix, validate it, and reload it when the file changes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import ValidationError

from quantroute.core.matrix import SCHEMA_VERSION, CapabilityMatrix
from quantroute.errors import MatrixError

log = logging.getLogger("quantroute.matrix")


def load_matrix(path: str | Path) -> CapabilityMatrix:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MatrixError(f"{path}: cannot read capability matrix: {exc.strerror}") from None
    except ValueError as exc:
        raise MatrixError(f"{path}: capability matrix is not valid JSON: {exc}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise MatrixError(
            f"{path}: capability matrix schema_version is {version!r}, this gateway reads "
            f"{SCHEMA_VERSION}; re-run `quantroute profile`"
        )
    try:
        return CapabilityMatrix.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MatrixError(f"{path}: invalid capability matrix at {where}: {first['msg']}") from None


class MatrixSource:
    """Holds the current matrix (or None: route on live state alone)."""

    def __init__(self, path: Path | None, matrix: CapabilityMatrix | None = None) -> None:
        self.path = path
        self.current = matrix
        self._mtime: float | None = None
        if path is not None and matrix is None:
            self.current = load_matrix(path)
            self._mtime = path.stat().st_mtime

    def maybe_reload(self) -> bool:
        """Reload when the file's mtime changed; a bad new file keeps the old matrix and logs."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            self.current = load_matrix(self.path)
        except MatrixError as exc:
            log.error("keeping the previous capability matrix: %s", exc)
            return False
        log.info("reloaded capability matrix from %s", self.path)
        return True
