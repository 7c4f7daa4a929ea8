"""Optional extras: packages some commands need beyond the gateway's own dependencies.

``pip install quantroute`` (and the gateway image) carries only what ``quantroute serve`` needs.
``quantroute profile`` and ``matrix plot`` need the ``profiler`` extra, ``demo --traffic`` the
``demo`` extra (``pyproject.toml`` lists them). A command checks with :func:`require` before it
starts, so a missing extra is one line saying how to install it, never a traceback.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec

from quantroute.errors import MissingExtra

__all__ = ["REDIS_HINT", "MissingExtra", "installed", "require"]

REDIS_HINT = "pip install 'quantroute[redis]' (the image: scripts/build-image --extras redis)"


def installed(module: str) -> bool:
    """Whether a top-level ``module`` is installed, without importing it (config validation)."""
    return find_spec(module) is not None


def require(extra: str, command: str, *modules: str) -> None:
    """Import ``modules``; raise :class:`MissingExtra` naming ``extra`` if any cannot be."""
    missing = [module for module in modules if not _importable(module)]
    if missing:
        raise MissingExtra(
            f"`quantroute {command}` needs {' and '.join(missing)}, which {_is_are(missing)} not "
            f"installed. Install the {extra!r} extra: pip install 'quantroute[{extra}]' "
            f"(from a checkout: pip install -e '.[{extra}]')"
        )


def _importable(module: str) -> bool:
    """False when ``module`` is not installed; an installed but broken one raises its error."""
    try:
        import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module + ".").startswith(exc.name + "."):
            raise
        return False
    return True


def _is_are(names: list[str]) -> str:
    return "is" if len(names) == 1 else "are"
