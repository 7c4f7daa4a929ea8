"""A real ``redis-server`` on a free loopback port for the conversation-store tests.

Debian's ``redis-server`` (``apt-get install redis-server``); without it the Redis tests skip and
say why.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantroute.testing.redis_server import INSTALL, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip(f"REDIS TESTS SKIPPED: redis-server is not installed ({INSTALL})")
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
