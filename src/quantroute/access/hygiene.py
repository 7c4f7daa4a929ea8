"""Request hygiene: JSON bodies only, per-group caps, request ids safe to log and echo."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from typing import Any

from quantroute.access.config import RequestCaps
from quantroute.errors import InvalidRequest

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_IDS = random.Random(os.urandom(32))
"""Request ids: 128 random bits from a generator seeded once per process from the OS (an id
names a request in logs and errors, it guards nothing). ``uuid.uuid4`` asks the OS for entropy
on every call: measured, a getrandom system call per request cost more than the whole routing
decision at low load on this VM."""


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters (charset) allowed."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``x-request-id`` when it is a plain token (so it is safe in a log line),
    else a new one."""
    given = headers.get("x-request-id")
    if given is not None and _REQUEST_ID.match(given):
        return given
    return f"req_{_IDS.getrandbits(128):032x}"


def caps_for(caps: Mapping[str, RequestCaps], group: str) -> RequestCaps | None:
    return caps.get(group) or caps.get("*")


def check_caps(caps: RequestCaps, body: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidRequest` naming the parameter that asks for more than the cap."""
    if caps.max_tokens is not None:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > caps.max_tokens:
                raise InvalidRequest(
                    f"'{name}' is {value}; at most {caps.max_tokens} is allowed here.", param=name
                )
    n = body.get("n")
    if n is not None and caps.n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRequest("'n' must be a positive integer.", param="n")
        if n > caps.n:
            raise InvalidRequest(f"'n' is {n}; at most {caps.n} is allowed here.", param="n")
    messages = body.get("messages")
    if caps.messages is not None and isinstance(messages, list) and len(messages) > caps.messages:
        raise InvalidRequest(
            f"{len(messages)} messages; at most {caps.messages} are allowed here.",
            param="messages",
        )
