"""The resident host's control endpoint (``tcletd serve``): the Unix socket, accepting and
admitting clients, and keeping the endpoint's bounds.

Host side of the trust boundary, facing the operator's clients. What one client's connection does
(its frames, the hello, the operations it asks for) is :mod:`tcletd.host.connection`'s; the
frames are :mod:`tcletd.shared.control`'s and docs/protocol.md documents them. The socket lives
in a 0700 directory (:mod:`tcletd.host.control_path`), and only the host's own user or root may
use it.

The endpoint is bounded (:mod:`tcletd.host.bounds`: connections, deadlines, bytes held for
incomplete frames, frames handled per loop turn), and accepting goes on at EMFILE: a reserve
descriptor is given up to accept one connection, which evicts an idle one or is told why not.
Before EMFILE comes, the host's own count does the same: a connection that would take the host
into the margin it keeps below its descriptor limit (:func:`tcletd.host.quotas.control_room`)
evicts or is refused, because libzmq aborts the host when a worker connects at the limit.
Each connection closed or refused to keep the bounds is audited, rate-limited
(:mod:`tcletd.host.control_audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from tcletd.host.bounds import Bounds, Held, overdue, victim_for
from tcletd.host.connection import ControlConnection
from tcletd.host.control_audit import ControlAudit
from tcletd.host.control_path import claim, release
from tcletd.host.host import Host
from tcletd.host.pacing import Endpoint, Peers

log = logging.getLogger(__name__)

# Connections accepted per readiness of the listening socket: the rest wait for the next turn.
# Each holds a descriptor before it is admitted (or evicts), so this is what the host may hold
# beyond its cap for a turn: at 64, 200 idle connections took a cap-16 host to EMFILE.
ACCEPT_PER_TURN = 8
ACCEPT_RETRY = 0.1  # seconds, when out of descriptors with none in reserve


class ControlServer:
    """The Unix socket ``tcletd serve`` listens on, and the connections it has."""

    def __init__(
        self,
        host: Host,
        path: Path,
        *,
        max_connections: int | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        """``max_connections`` (default 256) overrides ``bounds``' (see :class:`Bounds`)."""
        self.host = host
        self.path = path
        bounds = bounds or Bounds()
        if max_connections is not None:
            bounds = Bounds(**{**bounds.__dict__, "max_connections": max_connections})
        self.bounds = bounds
        self.held = Held(bounds.max_held)
        self.endpoint = Endpoint(bounds.endpoint_share, bounds.burst, time.monotonic())
        self.peers = Peers(bounds.client_share, bounds.burst)
        self.audit = ControlAudit(lambda: host.audit)
        self._listener: socket.socket | None = None
        self._connections: dict[ControlConnection, None] = {}  # oldest first
        self._reserve: int | None = None  # a descriptor given up to accept at EMFILE
        self._sweeper: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None  # accepting paused, out of descriptors
        self._accepting: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        claim(self.path)
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.setblocking(False)
        try:
            listener.bind(str(self.path))
            self.path.chmod(0o600)
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._retake_reserve()
        loop.add_reader(listener.fileno(), self._accept)
        self._sweep()

    # ---- accepting ----------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_PER_TURN):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue  # the client gave up before we took it (ECONNABORTED)
                if self._reserve is None:
                    # Nothing to give up until a connection closes: look again shortly.
                    loop.remove_reader(listener.fileno())
                    self._retry = loop.call_later(ACCEPT_RETRY, self._resume_accepting)
                    return
                os.close(self._reserve)
                self._reserve = None
                try:
                    sock, _addr = listener.accept()
                except OSError:
                    self._retake_reserve()
                    return
                self._take_socket(sock, starved=True)
                return  # one a turn on the reserve: it is back once a connection closes
            self._take_socket(sock, starved=not self._counted(1))

    def _counted(self, newcomer: int = 0) -> bool:
        """Tell the host how many descriptors the endpoint holds (connections admitted or on
        their way, and ``newcomer``): whether that leaves its margin. One being closed is not
        counted: its descriptor goes within the turn, and the margin is for such moments."""
        held = self._staying() + len(self._accepting) + newcomer
        return self.host.control_descriptors(held, ACCEPT_PER_TURN)

    def _staying(self) -> int:
        """Connections not on their way out: those leaving hold no slot, and their descriptor
        goes within the turn."""
        return sum(1 for c in self._connections if not c.closing)

    def _take_socket(self, sock: socket.socket, *, starved: bool) -> None:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        factory = functools.partial(self._connection, starved)
        task = loop.create_task(loop.connect_accepted_socket(factory, sock))
        self._accepting.add(task)
        task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task[Any]) -> None:
        self._accepting.discard(task)
        self._counted()
        if not task.cancelled() and task.exception() is not None:
            log.warning("control: accepting a client failed: %s", task.exception())

    def _resume_accepting(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._listener is not None:
            self._retake_reserve()
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    def _retake_reserve(self) -> None:
        if self._reserve is None:
            with contextlib.suppress(OSError):
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def _connection(self, starved: bool) -> ControlConnection:
        conn = ControlConnection(
            self.host,
            self._gone,
            self.bounds,
            self.held,
            self._admit,
            self.audit,
            self.endpoint,
            self.peers,
        )
        conn.starved = starved
        return conn

    def _gone(self, conn: ControlConnection) -> None:
        self._connections.pop(conn, None)
        # Its transport closes the socket right after telling us: take the descriptor then.
        asyncio.get_running_loop().call_soon(self._descriptor_free)

    def _descriptor_free(self) -> None:
        self._counted()
        if self._retry is not None:  # out of descriptors: accept again now, not in a while
            self._resume_accepting()
        else:
            self._retake_reserve()

    def _admit(self, conn: ControlConnection) -> bool:
        """Past the cap (or accepted on the reserve descriptor), make room by evicting the
        connection that has waited longest without completing a request; refuse ``conn`` when
        every other one runs a tclet."""
        self._connections[conn] = None  # made: it has a transport to be told and closed on
        starved = conn.starved
        slots = self._staying()
        if not starved and slots <= self.bounds.max_connections:
            return True
        victim = victim_for(conn, self._connections)
        if victim is not None:
            why = "the host was out of descriptors" if starved else "the host was full"
            what = "half a frame sent" if victim.frame_since is not None else "idle"
            self._close("evicted", victim, f"evicted: {what} while {why}")
            self._counted()
            return True
        if starved:
            why = "refused: the host is out of file descriptors; try again later"
        else:
            why = (
                f"refused: the host serves {self.bounds.max_connections} connections at most, "
                "each running a tclet; try again later"
            )
        self._close("refused", conn, why)
        return False

    def _close(self, action: str, conn: ControlConnection, why: str) -> None:
        self.audit(action, conn.client, why)
        conn.hang_up(why)

    # ---- deadlines ----------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close what is past its deadline: a frame not complete ``frame_deadline`` after its
        first byte, a connection without a tclet idle for ``idle_deadline``."""
        bounds = self.bounds
        now = time.monotonic()
        for conn in list(self._connections):
            why = overdue(conn, bounds, now)
            if why is not None:
                self._close("deadline", conn, why)
        self._sweeper = asyncio.get_running_loop().call_later(bounds.sweep_period, self._sweep)

    # ---- stopping -----------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        for timer in filter(None, (self._sweeper, self._retry)):
            timer.cancel()
        self._sweeper = self._retry = None
        if self._listener is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        release(self.path)
        self.audit.flush()

    async def drain(self, timeout: float = 2.0) -> None:
        """Let every client see its tclet's exit (after the host has ended them)."""
        follows = [c.follow for c in list(self._connections) if c.follow is not None]
        if follows:
            await asyncio.wait(follows, timeout=timeout)
