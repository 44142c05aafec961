"""Sockets on a tclet's behalf: canonicalise, resolve, decide, then create the real socket.

Host side of the trust boundary. Every request here comes from a worker and is treated as
hostile: the words are canonicalised by the policy engine, a name is looked up here (never by
the worker) and only when the policy needs its addresses (a name no allow rule could match is
denied without a lookup, so a tclet cannot leak data through the resolver), through the host's
:class:`~tcletd.host.resolver.Resolver` (c-ares, a timeout, one lookup in flight per tclet, a
lookups-per-second quota), and the connection is made only to an address the policy checked,
so a second lookup can never change the answer (no DNS rebinding). A granted socket's
descriptor is handed to the worker on its SOCK_SEQPACKET socketpair, framed with the socket's
id; the host keeps its own duplicate so it can revoke (shutdown) or account for it later, and
closes it when the tclet closes the channel or ends.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from tcletd.host.resolver import Resolver
from tcletd.policy import Decision, Origin, Policy, denied_message
from tcletd.policy.actions import action_spec
from tcletd.policy.addresses import canonical_host
from tcletd.shared import protocol as p
from tcletd.shared.errors import RequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Remembered decisions on address literals (Broker.decide), for every tclet of a host together:
# each holds a few hundred bytes, so the memory is bounded whatever words tclets send.
LITERAL_DECISIONS = 1024
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM_NONBLOCK = socket.SOCK_STREAM | _NONBLOCK
_SOL_SOCKET, _SCM_RIGHTS = socket.SOL_SOCKET, socket.SCM_RIGHTS


class Audit(Protocol):
    """Called with every decision (None when the request failed before one: a bad port or host,
    a failed lookup) and, when the host looked the name up, the lookup's milliseconds."""

    def __call__(self, d: Decision | None, why: str, lookup_ms: float | None = None) -> None: ...


class Lookups(Protocol):
    """A tclet's side of lookups: its key for the one-in-flight rule is this object, and
    ``admit_lookup`` counts one against its quota or raises (and audits) QuotaRefused."""

    def admit_lookup(self, action: str, host: str, port: str) -> None: ...


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
        # socket.send_fds, without its wrapper's frame and array building per call.
        rights = array.array("i", (sock.fileno(),))
        self._sock.sendmsg((p.encode(msg),), ((_SOL_SOCKET, _SCM_RIGHTS, rights),))


class Broker:
    """Decides and creates sockets for tclets. One instance serves every tclet of a host."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolver: Resolver | None = None) -> None:
        self._loop = loop
        self.resolver = resolver or Resolver(loop=loop)
        # getservbyname reads /etc/services through NSS and may block; one thread of its own,
        # never the loop's default executor, so a slow one delays only service-name requests.
        self._services = ThreadPoolExecutor(1, thread_name_prefix="tcletd-services")
        # Decisions on address literals, by (action, host, port, policy, origin): see decide.
        self._literal: dict[tuple[str, str, str, Policy, Origin], tuple[Decision, str]] = {}

    async def close(self) -> None:
        await self.resolver.close()
        self._services.shutdown(wait=False, cancel_futures=True)

    # ---- words ------------------------------------------------------------------------------

    async def _service(self, name: str, text: str) -> int:
        try:
            future = self._loop.run_in_executor(self._services, socket.getservbyname, name, "tcp")
            return await asyncio.wait_for(future, self.resolver.timeout)
        except (OSError, TimeoutError):
            raise RequestError(f'expected integer but got "{text}"') from None

    async def decide(
        self,
        action: str,
        host_text: str,
        port_text: str,
        policy: Policy,
        origin: Origin,
        audit: Audit,
        lookups: Lookups | None = None,
    ) -> Decision:
        """Canonicalise, look up if the policy needs it, and decide; every outcome is audited, a
        denial raised. An empty host is filled in by the action's rule (the origin for a
        connect). A name is looked up only when :meth:`Policy.needs_addresses` says so.

        The decision on an address literal with a numeric port is a pure function of the words,
        the (immutable) policy and the origin, and is remembered (:data:`LITERAL_DECISIONS`
        of them, forgotten all at once when full): a loop of connects to one address is
        canonicalised and decided once, and every request is still audited and refused alike.
        """
        key = (action, host_text, port_text, policy, origin)
        known = self._literal.get(key)
        if known is not None:
            decision, target = known
            audit(decision, decision.reason, None)
            if not decision.allowed:
                raise RequestError(denied_message(target, port_text))
            return decision
        spec = action_spec(action)
        host_text = spec.target_host(host_text, origin)
        try:
            host, port = spec.parse_request(host_text, port_text, services=policy.service_names)
            if isinstance(port, str):
                port = await self._service(port, port_text)
        except RequestError as exc:
            audit(None, exc.message)
            raise
        addresses: list[IPAddress] = []
        lookup_ms: float | None = None
        if host.ip is None and policy.needs_addresses(action, host, port, origin):
            if lookups is not None:
                lookups.admit_lookup(action, host_text, port_text)  # audits its own refusal
            started = time.monotonic()
            try:
                addresses = await self.resolver.addresses(host.text, lookups)
            except RequestError as exc:
                audit(None, exc.message, (time.monotonic() - started) * 1000)
                raise
            lookup_ms = (time.monotonic() - started) * 1000
        decision = policy.decide(action, host, port, origin, addresses or None)
        if host.ip is not None and isinstance(port, int):
            if len(self._literal) >= LITERAL_DECISIONS:
                self._literal.clear()
            self._literal[key] = (decision, host_text)
        audit(decision, decision.reason, lookup_ms)
        if not decision.allowed:
            raise RequestError(denied_message(host_text, port_text))
        return decision

    # ---- connect ----------------------------------------------------------------------------

    async def connect(
        self,
        req: p.Connect,
        policy: Policy,
        origin: Origin,
        audit: Audit,
        lookups: Lookups | None = None,
    ) -> socket.socket:
        """A socket connected (or, for -async, connecting) to an address the policy checked."""
        decision = await self.decide("connect", req.host, req.port, policy, origin, audit, lookups)
        local: tuple[str, int] | None = None
        if req.myaddr or req.myport:
            # Binding a client to a local address is governed by the listen rules.
            bind = await self.decide(
                "listen", req.myaddr, req.myport or "0", policy, origin, audit, lookups
            )
            local = (str(bind.usable[0]), bind.port)
        last: OSError | None = None
        for address in decision.usable:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if local is not None and ipaddress.ip_address(local[0]).version != address.version:
                continue
            # Non-blocking from its creation: one system call fewer than setblocking(False).
            sock = socket.socket(family, _STREAM_NONBLOCK)
            if not _NONBLOCK:
                sock.setblocking(False)
            try:
                if local is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(local)
                target = (str(address), decision.port)
                code = sock.connect_ex(target)
                if code == errno.EINPROGRESS and not req.asynchronous:
                    code = await self._connected(sock, target)
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

    async def _connected(self, sock: socket.socket, target: tuple[str, int]) -> int:
        """Wait for a non-blocking connect to finish; its errno (0 when connected).

        A loopback connect has usually finished by the time connect() returns, so look before
        paying for a turn of the event loop, with a second connect(): one system call that says
        connected (0, or EISCONN), still in progress (EALREADY) or how it failed (the error,
        consumed as SO_ERROR would be), where poll() plus SO_ERROR took two and a poll object.
        """
        code = sock.connect_ex(target)
        if code in (0, errno.EISCONN):
            return 0
        if code != errno.EALREADY:
            return code
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(sock, _resolve, ready)
        try:
            await ready
        finally:
            self._loop.remove_writer(sock)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    # ---- listen -----------------------------------------------------------------------------

    async def listen(
        self,
        req: p.Listen,
        policy: Policy,
        origin: Origin,
        audit: Audit,
        lookups: Lookups | None = None,
    ) -> tuple[list[socket.socket], list[list[str]]]:
        """Bound, listening, non-blocking sockets and Tcl's ``-sockname`` list for them."""
        decision = await self.decide("listen", req.myaddr, req.port, policy, origin, audit, lookups)
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
        return [addr, await self.resolver.name_of(addr), str(port)]

    def accept_all(
        self, listener: socket.socket
    ) -> tuple[list[tuple[socket.socket, str, int]], OSError | None]:
        """Accept every pending connection: (socket, peer address, peer port) each, and the
        error that stopped it early (EMFILE, ENFILE, ENOBUFS...; None when the backlog is
        empty). After such an error the rest stays in the kernel's backlog, and the listener
        stays readable: the caller must stop watching it a while, or the loop spins on it."""
        out: list[tuple[socket.socket, str, int]] = []
        while True:
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return out, None
            except ConnectionAbortedError:
                continue  # that peer gave up while queued; the next one may not have
            except OSError as exc:
                return out, exc
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
    task = loop.create_task(_Resumed(coro, pending).wait())
    task.add_done_callback(_report_failure)
    return task


def _report_failure(task: asyncio.Task[None]) -> None:
    # Retrieved here, so that a handler's bug is reported at once, never as a task exception
    # "never retrieved" at garbage collection (the request handlers answer their own errors).
    if not task.cancelled() and (exc := task.exception()) is not None:
        task.get_loop().call_exception_handler(
            {"message": "request handler failed", "exception": exc, "task": task}
        )


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
