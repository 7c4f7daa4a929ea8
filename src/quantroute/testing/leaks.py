"""Counting what a scenario may have leaked: upstream sockets, tasks, in-flight accounts.

Sockets are read from ``/proc``: the TCP connections a process holds (its fds' socket inodes
matched against ``/proc/net/tcp`` and ``tcp6``) to a set of remote ports, in any state but
closed: ESTABLISHED and CLOSE_WAIT (the peer closed, we never did) both count. Linux only.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
}
HELD = frozenset({"ESTABLISHED", "SYN_SENT", "CLOSE_WAIT"})
"""States in which this end still holds the connection open."""


def _socket_inodes(pid: int | str) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_to(ports: set[int], pid: int | str = "self") -> Counter[str]:
    """State -> count of this process's TCP connections whose remote port is in ``ports``."""
    inodes = _socket_inodes(pid)
    states: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in ports and fields[9] in inodes:
                states[_STATES.get(fields[3], fields[3])] += 1
    return states


def held_connections(ports: set[int], pid: int | str = "self") -> int:
    counts = connections_to(ports, pid)
    return sum(n for state, n in counts.items() if state in HELD)
