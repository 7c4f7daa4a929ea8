"""A small authoritative DNS server on loopback (UDP and TCP on one port), built with dnslib.

It answers A and AAAA queries from a zone the test edits while it runs, like CoreDNS answers for
a headless Service (one record per Ready pod, TTL 5 s). UDP answers over 512 bytes are truncated
(TC bit), as a server does for a client without EDNS, so a long answer makes the client retry over
TCP. ``fail("servfail")`` answers SERVFAIL, ``fail("silent")`` drops queries (the client times
out), ``fail(None)`` answers again. It counts the queries it got per transport.

dnslib, not dnspython, so the resolver under test (dnspython) is not checked against itself.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter
from typing import Any, Literal

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSHeader, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

Failure = Literal["servfail", "silent"] | None
TTL_S = 5
UDP_LIMIT = 512  # no EDNS from the client: longer UDP answers are truncated


class Zone(BaseResolver):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, tuple[str, ...]] = {}
        self.failure: Failure = None
        self.queries: Counter[str] = Counter()

    def set(self, name: str, *addresses: str) -> None:
        """``name`` resolves to exactly these addresses (none: the name exists, no record)."""
        with self._lock:
            self._records[name.rstrip(".").lower()] = addresses

    def remove(self, name: str) -> None:
        """``name`` no longer exists: NXDOMAIN."""
        with self._lock:
            self._records.pop(name.rstrip(".").lower(), None)

    def count(self, transport: str) -> None:
        with self._lock:
            self.queries[transport] += 1

    def fail(self, failure: Failure) -> None:
        with self._lock:
            self.failure = failure

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            failure, addresses = self.failure, self._records.get(qname)
        if failure == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            for address in addresses:
                version = ipaddress.ip_address(address).version
                if (qtype, version) == ("A", 4):
                    reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=TTL_S))
                elif (qtype, version) == ("AAAA", 6):
                    reply.add_answer(
                        RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL_S)
                    )
        return reply


class _Handler(DNSHandler):
    def get_reply(self, data: bytes) -> bytes:
        reply = self.server.resolver.resolve(DNSRecord.parse(data), self)
        packed: bytes = reply.pack()
        if self.protocol == "udp" and len(packed) > UDP_LIMIT:
            # As CoreDNS or BIND: header with TC set and the question, no records (dnslib's own
            # truncate() also drops the question, which a resolver rightly refuses).
            header = DNSHeader(id=reply.header.id, qr=1, aa=1, ra=1, tc=1)
            packed = DNSRecord(header=header, q=reply.q).pack()
        return packed

    def handle(self) -> None:
        zone: Zone = self.server.resolver
        tcp = self.server.socket_type == socket.SOCK_STREAM
        zone.count("tcp" if tcp else "udp")
        if zone.failure == "silent":
            if tcp:
                self.request.recv(8192)
            return
        super().handle()


class _Quiet:
    def __getattr__(self, _: str) -> Any:
        return lambda *args: None


class LoopbackDns:
    """Start with ``with LoopbackDns() as dns:``; ``dns.port`` serves UDP and TCP on 127.0.0.1."""

    def __init__(self) -> None:
        self.zone = Zone()
        self._servers: list[DNSServer] = []
        self.port = 0

    def start(self) -> LoopbackDns:
        for _ in range(20):  # a UDP port whose TCP twin is free too
            udp = DNSServer(self.zone, "127.0.0.1", 0, logger=_Quiet(), handler=_Handler)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    self.zone, "127.0.0.1", port, tcp=True, logger=_Quiet(), handler=_Handler
                )
            except OSError:
                udp.server.server_close()
                continue
            self.port, self._servers = port, [udp, tcp]
            for server in self._servers:
                server.start_thread()
            return self
        raise RuntimeError("no free port for UDP and TCP")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
            server.thread.join(5)
        self._servers = []

    def __enter__(self) -> LoopbackDns:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
