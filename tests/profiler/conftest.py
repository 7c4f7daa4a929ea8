"""Fixtures for profiler tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def hanging_socket() -> Iterator[socket.socket]:
    """A listening socket nobody serves: connections are made, requests never answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock
    finally:
        sock.close()
