"""A DNS server on 127.0.0.1: answers A and AAAA from a dict, can delay answers, and records
every query it got.

``tcletd attack`` points its embedded host at one of these, so no attack ever sends a query to
the machine's resolver and a judge can count the queries a tclet caused (``queries_under``); the
tests point every host at one too (``tests/support/dns.py`` re-exports it). It is on the tool's
side of the trust boundary, but every datagram it reads was caused by a hostile tclet: a
malformed one is dropped, and only the question's name and type are kept. One thread serves
every query: delayed answers wait in a heap, so a thousand of them cost no thread each, and
``stop`` drops them at once.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import select
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

__all__ = ["DnsServer"]


def _under(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


class DnsServer:
    """``records``: name -> addresses (IPv4 and IPv6 literals); a name ``*.SUFFIX`` answers for
    every name under SUFFIX (not SUFFIX itself) that has no record of its own; other names get
    NXDOMAIN. ``delays``: a name suffix -> seconds to hold its answers (``"slow.example": 25``).
    """

    def __init__(
        self,
        records: Mapping[str, Sequence[str]] | None = None,
        *,
        delays: Mapping[str, float] | None = None,
    ) -> None:
        self.records = {k.lower().rstrip("."): list(v) for k, v in (records or {}).items()}
        self.delays = {k.lower().rstrip("."): v for k, v in (delays or {}).items()}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._queries: list[tuple[str, str]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="dns-server", daemon=True)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as ``--nameserver`` and ``Host(nameservers=...)`` take it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what it was asked --------------------------------------------------------------------

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every query so far as (name, type), in arrival order: ``("a.example", "AAAA")``."""
        with self._lock:
            return list(self._queries)

    def asked(self, name_or_suffix: str) -> list[tuple[str, str]]:
        """The queries for a name or for any name under it."""
        key = name_or_suffix.lower().rstrip(".")
        return [q for q in self.queries if _under(q[0], key)]

    def queries_under(self, suffix: str) -> list[str]:
        """The names asked for (any type, in arrival order, repeats kept) that are ``suffix``
        or under it."""
        return [name for name, _ in self.asked(suffix)]

    def clear(self) -> None:
        with self._lock:
            self._queries.clear()

    # ---- serving ------------------------------------------------------------------------------

    def _delay(self, name: str) -> float:
        for suffix, seconds in self.delays.items():
            if _under(name, suffix):
                return seconds
        return 0.0

    def _addresses(self, name: str) -> list[str] | None:
        addresses = self.records.get(name)
        if addresses is not None:
            return addresses
        # The nearest wildcard wins, as in a zone: "*.b.c" before "*.c" for "a.b.c".
        labels = name.split(".")
        for i in range(1, len(labels)):
            addresses = self.records.get("*." + ".".join(labels[i:]))
            if addresses is not None:
                return addresses
        return None

    def _answer(self, data: bytes) -> tuple[bytes, float] | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # a malformed datagram is dropped, as a real server would
            return None
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self._queries.append((name, str(qtype)))
        reply = request.reply()
        addresses = self._addresses(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        for text in addresses or ():
            ip = ipaddress.ip_address(text)
            if qtype == "A" and ip.version == 4:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(text), ttl=60))
            elif qtype == "AAAA" and ip.version == 6:
                reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(text), ttl=60))
        return reply.pack(), self._delay(name)

    def _serve(self) -> None:
        held: list[tuple[float, int, bytes, tuple[str, int]]] = []
        count = 0
        while not self._stopping:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
            ready, _, _ = select.select([self._sock, self._wake_r], [], [], timeout)
            if self._sock in ready:
                data, peer = self._sock.recvfrom(4096)
                answer = self._answer(data)
                if answer is not None:
                    count += 1
                    heapq.heappush(held, (time.monotonic() + answer[1], count, answer[0], peer))
            now = time.monotonic()
            while held and held[0][0] <= now and not self._stopping:
                _, _, packet, peer = heapq.heappop(held)
                with contextlib.suppress(OSError):  # the asker went away
                    self._sock.sendto(packet, peer)
