"""Parsing a request body as JSON within bounds: nesting depth, never a RecursionError.

``json.loads`` recurses per nesting level; 100,000 levels raise ``RecursionError`` (a 500 and two
tracebacks before this module). Bodies are parsed, a recursion error is turned into the same
clean error as a body deeper than ``max_depth``, and depth is measured without recursion.
"""

from __future__ import annotations

import json
from typing import Any


class TooDeep(ValueError):
    """The JSON value nests deeper than allowed."""


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when arrays/objects nest more than ``limit`` levels (the top level is 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def loads_bounded(raw: bytes | str, max_depth: int) -> Any:
    """``json.loads`` that raises :class:`TooDeep` instead of recursing without bound.

    Other malformed input raises ``ValueError`` (``json.JSONDecodeError``) as ``json.loads`` does.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise TooDeep(f"JSON nests deeper than {max_depth} levels") from None
    if isinstance(value, dict | list) and depth_exceeds(value, max_depth):
        raise TooDeep(f"JSON nests deeper than {max_depth} levels")
    return value
