"""Sockets on a tclet's behalf: canonicalise, resolve, decide, then create the real socket.

Host side of the trust boundary. Every request here comes from a worker and is treated as
hostile: the words are canonicalised by the policy engine, names are resolved here (never by the
worker) and the connection is made only to an address the policy checked, so a second lookup
can never change the answer (no DNS rebinding). A granted socket's descriptor is handed to the
worker on its SOCK_SEQPACKET socketpair, framed with the socket's id; the host keeps its own
duplicate so it can revoke (shutdown) or account for it later, and closes it when the tclet
closes the channel or ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import select
import socket
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from tcletd.policy import Decision, Origin, Policy, denied_message
from tcletd.policy.actions import action_spec
from tcletd.policy.addresses import CanonicalHost, canonical_host
from tcletd.shared import protocol as p
from tcletd.shared.errors import RequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Called with every decision (None when the request failed before one: a bad port or host).
Audit = Callable[[Decision | None, str], None]

# Tcl's own wording for OS errors in `socket`, so scripts' error handling keeps working.
_TCL_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "host is unreachable",
    errno.ENETUNREACH: "network is unreachable",
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "cannot assign requested address",
    errno.EACCES: "permission denied",
}


def os_error(exc: OSError) -> RequestError:
    """A RequestError worded as Tcl words a failed ``socket`` (message and errorCode)."""
    code = exc.errno or 0
    text = _TCL_ERRNO_TEXT.get(code) or (os.strerror(code).lower() if code else str(exc))
    name = errno.errorcode.get(code, "EIO")
    return RequestError(f"couldn't open socket: {text}", ("POSIX", name, text))


class FdChannel:
    """The host's end of a worker's descriptor socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def hand_over(self, msg: p.Granted | p.Accepted, sock: socket.socket) -> None:
        """Send ``msg`` with ``sock``'s descriptor; OSError if the worker is not taking them."""
        socket.send_fds(self._sock, [p.encode(msg)], [sock.fileno()])


class Broker:
    """Decides and creates sockets for tclets. One instance serves every tclet of a host."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- words ------------------------------------------------------------------------------

    async def _service(self, name: str, text: str) -> int:
        try:
            return await self._loop.run_in_executor(None, socket.getservbyname, name, "tcp")
        except OSError:
            raise RequestError(f'expected integer but got "{text}"') from None

    async def resolve(self, host: CanonicalHost, port: int) -> list[IPAddress]:
        """Every address a name resolves to, in resolver order; a literal is itself."""
        if host.ip is not None:
            return [host.ip]
        try:
            infos = await self._loop.getaddrinfo(
                host.text, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as exc:
            raise RequestError(f"couldn't open socket: {exc.strerror}") from None
        seen: list[IPAddress] = []
        for _family, _type, _proto, _canon, addr in infos:
            ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
            if ip not in seen:
                seen.append(ip)
        return seen

    async def decide(
        self,
        action: str,
        host_text: str,
        port_text: str,
        policy: Policy,
        origin: Origin,
        audit: Callable[[Decision | None, str], None],
    ) -> Decision:
        """Canonicalise, resolve and decide; every outcome is audited, a denial raised. An empty
        host is filled in by the action's rule (the origin for a connect)."""
        spec = action_spec(action)
        host_text = spec.target_host(host_text, origin)
        try:
            host, port = spec.parse_request(host_text, port_text, services=policy.service_names)
            if isinstance(port, str):
                port = await self._service(port, port_text)
            addresses = await self.resolve(host, port)
        except RequestError as exc:
            audit(None, exc.message)
            raise
        decision = policy.decide(action, host, port, origin, addresses)
        audit(decision, decision.reason)
        if not decision.allowed:
            raise RequestError(denied_message(host_text, port_text))
        return decision

    # ---- connect ----------------------------------------------------------------------------

    async def connect(
        self, req: p.Connect, policy: Policy, origin: Origin, audit: Audit
    ) -> socket.socket:
        """A socket connected (or, for -async, connecting) to an address the policy checked."""
        decision = await self.decide("connect", req.host, req.port, policy, origin, audit)
        local: tuple[str, int] | None = None
        if req.myaddr or req.myport:
            # Binding a client to a local address is governed by the listen rules.
            bind = await self.decide("listen", req.myaddr, req.myport or "0", policy, origin, audit)
            local = (str(bind.usable[0]), bind.port)
        last: OSError | None = None
        for address in decision.usable:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if local is not None and ipaddress.ip_address(local[0]).version != address.version:
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                if local is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(local)
                code = sock.connect_ex((str(address), decision.port))
                if code == errno.EINPROGRESS and not req.asynchronous:
                    code = await self._connected(sock)
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, os.strerror(code))
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return sock
        if last is None:
            last = OSError(errno.EADDRNOTAVAIL, "no usable address")
        raise os_error(last)

    async def _connected(self, sock: socket.socket) -> int:
        """Wait for a non-blocking connect to finish; its errno (0 when connected).

        A loopback connect has usually finished by the time connect() returns, so look before
        paying for a turn of the event loop.
        """
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if not poller.poll(0):
            ready: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_writer(sock, _resolve, ready)
            try:
                await ready
            finally:
                self._loop.remove_writer(sock)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    # ---- listen -----------------------------------------------------------------------------

    async def listen(
        self, req: p.Listen, policy: Policy, origin: Origin, audit: Audit
    ) -> tuple[list[socket.socket], list[list[str]]]:
        """Bound, listening, non-blocking sockets and Tcl's ``-sockname`` list for them."""
        decision = await self.decide("listen", req.myaddr, req.port, policy, origin, audit)
        wildcard = not req.myaddr
        addresses: list[IPAddress] = list(decision.usable[:1])
        if wildcard:
            # Tcl's server without -myaddr listens on IPv4 and IPv6 alike.
            addresses = [ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv6Address("::")]
        socks: list[socket.socket] = []
        port = decision.port
        try:
            for address in addresses:
                family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind((str(address), port))
                except OSError:
                    if wildcard and family == socket.AF_INET6 and len(socks) > 1:
                        socks.pop().close()  # no IPv6 on this machine: IPv4 alone, as Tcl does
                        continue
                    raise
                port = sock.getsockname()[1]
                sock.listen(128)
                sock.setblocking(False)
        except OSError as exc:
            for sock in socks:
                sock.close()
            raise os_error(exc) from None
        sockname = [await self.sockname_triple(s) for s in socks]
        return socks, sockname

    async def sockname_triple(self, sock: socket.socket) -> list[str]:
        """Tcl's ``{address hostname port}`` for a local socket."""
        addr, port = sock.getsockname()[:2]
        if ipaddress.ip_address(addr).is_unspecified:
            return [addr, addr, str(port)]
        try:
            name, _ = await self._loop.getnameinfo((addr, 0), socket.NI_NAMEREQD)
        except OSError:
            name = addr
        return [addr, name, str(port)]

    def accept_all(self, listener: socket.socket) -> list[tuple[socket.socket, str, int]]:
        """Accept every pending connection; (socket, peer address, peer port) each."""
        out: list[tuple[socket.socket, str, int]] = []
        while True:
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out  # e.g. EMFILE: leave the rest in the backlog for the next turn
            addr = str(peer[0]).split("%", 1)[0]
            mapped = ipaddress.ip_address(addr)
            if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
                addr = str(mapped.ipv4_mapped)
            out.append((conn, addr, int(peer[1])))

    def check_peer(self, policy: Policy, origin: Origin, addr: str, port: int) -> Decision:
        host = canonical_host(addr)
        assert host.ip is not None
        return policy.decide("accept", host, port, origin, [host.ip])


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Run ``coro`` now up to its first suspension; a task finishes it only if it suspends.

    What Python 3.12's eager tasks do. Most requests never suspend (an address literal, a
    loopback connect that is done when connect() returns), and a task would cost each of them
    a turn of the loop on the connect latency's critical path. None when it already finished.
    """
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    except Exception as exc:  # reported as a failed task's would be; the caller goes on
        loop.call_exception_handler({"message": "request handler failed", "exception": exc})
        return None
    return loop.create_task(_Resumed(coro, pending).wait())


class _Resumed:
    """Drives a coroutine that already ran to its first suspension, as a task would have."""

    def __init__(self, coro: Coroutine[Any, Any, None], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    async def wait(self) -> None:
        await self

    def __await__(self) -> Generator[Any, Any, None]:
        pending = self._pending
        while True:
            try:
                value = yield pending
            except BaseException as exc:  # cancellation: into the coroutine, as a task would
                try:
                    pending = self._coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                pending = self._coro.send(value)
            except StopIteration:
                return


def _resolve(future: asyncio.Future[None]) -> None:
    # A writer callback can fire again before the waiting task has run and removed it.
    if not future.done():
        future.set_result(None)


def shut(sock: socket.socket) -> None:
    """Close the host's duplicate; the tclet's own descriptor is untouched."""
    with contextlib.suppress(OSError):
        sock.close()
