"""Name lookups for the host: c-ares (``aiodns`` over ``pycares``) on the host's own loop.

Host side of the trust boundary. A tclet chooses the names, so a lookup is hostile work: each
has a timeout (3 s by default; c-ares gives up on its own query at the same time, so nothing
outlives it), a tclet has at most ONE lookup in flight (a second is refused at once, never
queued: the worker is synchronous, so a second can only come after the first timed out while
c-ares is still finishing it), and the host has at most ``max_in_flight`` in flight (further
ones are refused). No thread is involved (c-ares' sockets are the loop's readers): before,
lookups ran on asyncio's default executor (6 threads on a 2-core machine), and six tclets
looking up names whose server answers after 25 s made a seventh tclet's ``socket localhost
PORT`` wait 23 s instead of 3 ms.

c-ares reads the hosts file first (``lookups="fb"``), so ``localhost`` never reaches a DNS
server, and returns addresses in RFC 6724 order as glibc does. One exception keeps today's
answers: for ``localhost`` and names under it, c-ares adds ``::1`` even when the hosts file
lists only ``127.0.0.1`` (RFC 6761), where glibc (and Tcl's own ``socket``) gives ``127.0.0.1``
alone; a server bound with ``-myaddr localhost`` would then listen on ``::1`` where clients of
``127.0.0.1`` cannot reach it. So those names are answered from the hosts file when it lists
them (a local file of a few hundred bytes, read again only when it changes).

The nameservers come from ``Host(nameservers=...)``, else the ``TCLETD_NAMESERVERS`` environment
variable (comma or space separated ``ADDR[:PORT]``; the test suite points it at its own server),
else the system's ``/etc/resolv.conf``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tcletd.shared.errors import RequestError

if TYPE_CHECKING:
    import aiodns
    import pycares

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")

ENV_NAMESERVERS = "TCLETD_NAMESERVERS"
HOSTS_FILE = "/etc/hosts"
DEFAULT_TIMEOUT = 3.0  # seconds per lookup
DEFAULT_MAX_IN_FLIGHT = 64  # lookups in flight on one host
_BACKSTOP = 0.5  # seconds past c-ares' own timeout before the host gives up on a lookup
_TICK = 0.1  # seconds between c-ares timeout checks while lookups are in flight

# Tcl words a failed lookup with glibc's gai_strerror; a script matching on it keeps working.
NOT_FOUND = "couldn't open socket: Name or service not known"
TRY_AGAIN = "couldn't open socket: Temporary failure in name resolution"
# c-ares status codes (ares.h) that mean "no such name" rather than "could not find out".
_ARES_NOT_FOUND = frozenset({1, 4})  # ARES_ENODATA, ARES_ENOTFOUND
_ARES_ECONNREFUSED = 11


def parse_nameserver(text: str) -> str:
    """``ADDR``, ``ADDR:PORT``, ``[V6ADDR]:PORT`` -> c-ares' spelling; ValueError names it."""
    raw = text.strip()
    host, port = raw, ""
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected ADDR, ADDR:PORT or [V6ADDR]:PORT")
        port = rest[1:]
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {text!r}: {host!r} is not an IP address") from None
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"nameserver {text!r}: port {port!r} is not 1..65535")
    if not port:
        return str(address)
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def nameservers_from(given: Sequence[str] | None) -> list[str] | None:
    """The nameservers to use: ``given``, else $TCLETD_NAMESERVERS, else None (the system's)."""
    if given is None:
        env = os.environ.get(ENV_NAMESERVERS, "").replace(",", " ").split()
        if not env:
            return None
        try:
            return [parse_nameserver(s) for s in env]
        except ValueError as exc:
            raise ValueError(f"${ENV_NAMESERVERS}: {exc}") from None
    return [parse_nameserver(s) for s in given]


class Resolver:
    """Looks names up for the host's tclets; one per host, on the host's loop."""

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"lookup timeout must be > 0 seconds, not {timeout!r}")
        self.nameservers = nameservers_from(nameservers)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._busy: set[object] = set()
        self._hosts: tuple[int, dict[str, list[IPAddress]]] = (-1, {})
        # tries=1: c-ares' own timeout is then the lookup's, and it ends its query itself.
        # Given nameservers are the channel's init options and the system's resolv.conf is not
        # read at all, so no query can reach the machine's resolver by default.
        self._options: dict[str, object] = {"timeout": timeout, "tries": 1, "lookups": "fb"}
        if self.nameservers is not None:
            self._options |= {"servers": self.nameservers, "resolvconf_path": os.devnull}
        self._loop = loop
        # Made at the first lookup, not here: aiodns and pycares cost every host 15-17 ms of
        # its start (python -X importtime), and a one-shot run that names no host looks nothing
        # up. A bad option still fails at the first lookup, as c-ares' own errors always did.
        self._made: aiodns.DNSResolver | None = None
        self._retired: list[aiodns.DNSResolver] = []
        self._closing: set[asyncio.Future[None]] = set()
        self._renewed = -float("inf")

    @property
    def _dns(self) -> aiodns.DNSResolver:
        if self._made is None:
            self._made = _on_the_loop()(None, loop=self._loop, **self._options)
        return self._made

    async def addresses(self, name: str, owner: object = None) -> list[IPAddress]:
        """Every address ``name`` has, in resolver order, deduplicated; RequestError worded as
        Tcl words a failed lookup. ``owner`` (a tclet's key) may have one lookup in flight."""
        if name == "localhost" or name.endswith(".localhost"):
            listed = self._hosts_file().get(name)
            if listed:
                return list(listed)
        future = self._start(owner, lambda: asyncio.ensure_future(self._getaddrinfo(name)))
        try:
            result = await self._finish(future)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else 0
            raise RequestError(NOT_FOUND if code in _ARES_NOT_FOUND else TRY_AGAIN) from None
        seen: list[IPAddress] = []
        for node in result.nodes:
            ip = ipaddress.ip_address(node.addr[0].decode("ascii").split("%", 1)[0])
            if ip not in seen:
                seen.append(ip)
        if not seen:
            raise RequestError(NOT_FOUND)
        return seen

    async def _getaddrinfo(self, name: str) -> pycares.AddrInfoResult:
        try:
            return await self._dns.getaddrinfo(name, socket.AF_UNSPEC)
        except aiodns.error.DNSError as exc:
            now = asyncio.get_running_loop().time()
            if exc.args[:1] != (_ARES_ECONNREFUSED,) or now - self._renewed < self.timeout:
                raise
        # Seen, not understood: in one order of this project's tests (tests/host/test_dns.py then
        # tests/unit/test_lookup_needed.py) the first host's channel failed every query at once
        # with "Could not contact DNS servers" without opening a socket (strace), while its
        # server was up; a new channel worked, every time. So renew it (at most once per timeout: a
        # server that really refuses gets one more query, not a storm) and ask once more.
        self._renewed = now
        # The one retired before is at least a timeout old: its queries have all ended.
        for old in self._retired:
            self._closing.add(task := asyncio.ensure_future(old.close()))
            task.add_done_callback(self._closing.discard)
        self._retired = [self._dns]
        self._made = _on_the_loop()(None, loop=self._loop, **self._options)
        return await self._dns.getaddrinfo(name, socket.AF_UNSPEC)

    def _hosts_file(self) -> dict[str, list[IPAddress]]:
        try:
            stamp = os.stat(HOSTS_FILE).st_mtime_ns
            if stamp != self._hosts[0]:
                with open(HOSTS_FILE, encoding="utf-8", errors="replace") as f:
                    self._hosts = (stamp, _parse_hosts(f.read(1 << 20)))
        except OSError:
            self._hosts = (-1, {})
        return self._hosts[1]

    async def name_of(self, address: str) -> str:
        """The name of a local address (Tcl's ``-sockname`` hostname); the address itself when
        it has none or the lookup fails or the host is at its cap."""
        # c-ares takes an IPv6 address only as a (host, port, flowinfo, scope id) tuple.
        where = (address, 0, 0, 0) if ":" in address else (address, 0)
        dns = self._dns  # first: it binds the name aiodns for the except clause
        try:
            future = self._start(None, lambda: dns.getnameinfo(where, socket.NI_NAMEREQD))
            result = await self._finish(future)
        except (RequestError, aiodns.error.DNSError, ValueError, TypeError):
            return address
        # c-ares spells a numeric IPv6 answer with its scope ("::1%0"); glibc, and so Tcl, not.
        node = str(result.node or "").partition("%")[0]
        return node or address

    def _start(self, owner: object, begin: Callable[[], asyncio.Future[_T]]) -> asyncio.Future[_T]:
        if owner is not None and owner in self._busy:
            raise RequestError(TRY_AGAIN + " (a lookup is still in flight)")
        if self.in_flight >= self.max_in_flight:
            limit = self.max_in_flight
            raise RequestError(f"{TRY_AGAIN} (too many lookups on this host, limit {limit})")
        future = begin()
        self.in_flight += 1
        if owner is not None:
            self._busy.add(owner)

        def done(f: asyncio.Future[_T]) -> None:
            self.in_flight -= 1
            self._busy.discard(owner)
            if not f.cancelled():
                f.exception()  # retrieved: an abandoned lookup's failure is no error to log

        future.add_done_callback(done)
        return future

    async def _finish(self, future: asyncio.Future[_T]) -> _T:
        # c-ares' own timeout normally ends the query first (measured: 3.007 s for 3 s), which
        # frees the owner's slot before the tclet hears of it; this is the backstop. shield: a
        # cancelled request leaves the future to c-ares, and the slot stays taken until it ends.
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout + _BACKSTOP)
        except TimeoutError:
            raise RequestError(TRY_AGAIN) from None

    async def close(self) -> None:
        for dns in (*self._retired, *([] if self._made is None else [self._made])):
            await dns.close()


_made_class: type[aiodns.DNSResolver] | None = None


def _on_the_loop() -> type[aiodns.DNSResolver]:
    """The resolver class, defined at the first lookup of the process with aiodns's import (its
    base class); the module's names ``aiodns`` and ``pycares`` bind then too, for the ``except``
    clauses above, none of which can be reached before a lookup has started."""
    global _made_class, aiodns, pycares
    if _made_class is not None:
        return _made_class
    import aiodns
    import pycares

    class _OnTheLoop(aiodns.DNSResolver):
        """aiodns driven from the host's loop (its sockets are the loop's readers and writers),
        not from c-ares' own event thread. That thread re-reads the system's configuration when
        it changes and replaces the servers it was given: measured, in 6 of 8 runs of this
        module's tests under load, a lookup went to 127.0.0.1:53 (or, before resolv.conf was
        ignored, to the machine's resolver) instead of the test's server. Relies on aiodns 4's
        ``_make_channel``/``_sock_state_cb``/``_timer_cb``, its documented fallback path."""

        def _make_channel(self, **kwargs: Any) -> tuple[bool, pycares.Channel]:
            ref = weakref.ref(self)

            def state(fd: int, readable: bool, writable: bool) -> None:
                this = ref()
                if this is not None:
                    this._sock_state_cb(fd, readable, writable)

            return False, pycares.Channel(sock_state_cb=state, timeout=self._timeout, **kwargs)

        def _start_timer(self) -> None:
            # aiodns ticks once a second, so a 3 s timeout fired between 3 and 4 s; 0.1 s keeps
            # it within a tenth, at ten callbacks a second only while a lookup is in flight.
            self._timer = self.loop.call_later(_TICK, self._timer_cb)

    _made_class = _OnTheLoop
    return _made_class


def _parse_hosts(text: str) -> dict[str, list[IPAddress]]:
    """The hosts file's localhost names and their addresses, in file order."""
    names: dict[str, list[IPAddress]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        for name in fields[1:]:
            name = name.lower().rstrip(".")
            if (name == "localhost" or name.endswith(".localhost")) and ip not in names.get(
                name, []
            ):
                names.setdefault(name, []).append(ip)
    return names
