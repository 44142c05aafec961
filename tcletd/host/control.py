"""The resident host's control endpoint (``tcletd serve``): clients launch, follow and end tclets.

Host side of the trust boundary, facing the operator's clients (:mod:`tcletd.cli.client` is the
other end; :mod:`tcletd.shared.control` defines the frames). A client is trusted as the operator
only once the kernel says it runs as the host's own user or root (``SO_PEERCRED``); the socket
itself lives in a 0700 directory. Every frame is still checked: a malformed one gets an error
naming the field and the connection is closed, and nothing is launched. This module frames and
dispatches; what each ``op`` does is its operation's, in the registry of :mod:`tcletd.host.ops`.

One connection runs at most one tclet, and the tclet lives as long as the connection: a client
that goes away takes its tclet with it (``client went away``). Output is relayed as frames; when
a client reads slower than its tclet writes, the host stops reading that tclet's output (the
worker's writes then block) instead of buffering for it.

The endpoint is bounded (:mod:`tcletd.host.bounds`: connections, deadlines, bytes held for
incomplete frames, frames handled per loop turn), and accepting goes on at EMFILE: a reserve
descriptor is given up to accept one connection, which evicts an idle one or is told why not.
Each connection closed or refused to keep the bounds is audited, rate-limited
(:mod:`tcletd.host.control_audit`); the socket's path is :mod:`tcletd.host.control_path`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcletd.host.bounds import Bounds, Held, overdue, victim_for
from tcletd.host.control_audit import ControlAudit
from tcletd.host.control_path import claim, release
from tcletd.host.host import Host
from tcletd.host.ops import OPERATIONS, NotAnOperation, unknown_op
from tcletd.host.tclet import Tclet
from tcletd.shared.control import MAX_SCRIPT, FrameError, FrameReader, encode
from tcletd.shared.errors import EXIT_SOFTWARE, EXIT_TEMPFAIL, EXIT_USAGE, TcletdError
from tcletd.shared.states import EXIT_TERMINATED

log = logging.getLogger(__name__)

# Output frames queued for a client before the host stops reading its tclet's output.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Replies queued for a client that runs a tclet and does not read them (a flood of status
# requests); its tclet's output alone stays near HIGH_WATER, held at the relay.
MAX_QUEUED = 8 * 1024 * 1024
# Seconds a refused client's link stays half-closed before the host closes it.
FAILED_LINGER = 5.0
# Connections accepted per readiness of the listening socket: the rest wait for the next turn.
# Each holds a descriptor before it is admitted (or evicts), so this is what the host may hold
# beyond its cap for a turn: at 64, 200 idle connections took a cap-16 host to EMFILE.
ACCEPT_PER_TURN = 8
ACCEPT_RETRY = 0.1  # seconds, when out of descriptors with none in reserve


def peer_credentials(sock: socket.socket) -> dict[str, int]:
    """The connected client's ``pid`` and ``uid``, as the kernel saw them at connect."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return {"pid": pid, "uid": uid}


class ControlConnection(asyncio.Protocol):
    """One client: at most one run, status answers, signals passed on to its tclet (the
    :class:`~tcletd.host.ops.Session` its operations act on)."""

    def __init__(
        self,
        host: Host,
        done: Callable[[ControlConnection], None],
        bounds: Bounds | None = None,
        held: Held | None = None,
        admit: Callable[[ControlConnection], bool] | None = None,
        audit: ControlAudit | None = None,
    ) -> None:
        """``done`` is told when the connection is gone; ``admit``, when it is made, whether it
        may stay (it was told why not); ``audit`` records the bounds' closings."""
        self.host = host
        self._bounds_audit = audit
        self._done = done
        self._admit = admit
        self.bounds = bounds or Bounds()
        self._held = held or Held(self.bounds.max_held)
        self._holding = 0  # this connection's part of _held
        self._reader = FrameReader(MAX_SCRIPT)
        self._transport: asyncio.Transport | None = None
        self.tclet: Tclet | None = None
        self.follow: asyncio.Task[None] | None = None
        self.closing = False  # failed, evicted or refused: on its way out, slot given back
        self.client: dict[str, int] = {}
        self.since = time.monotonic()  # connected, or last completed a request
        self.frame_since: float | None = None  # first byte of the frame not yet complete
        self._paused = False  # reading paused until the next turn (per_turn frames handled)
        self._write_paused = False
        self._turn: asyncio.Handle | None = None
        self.starved = False  # accepted on the reserve descriptor, the host out of them

    @property
    def idle(self) -> bool:
        """Whether it has no tclet (it may be closed after ``idle_deadline`` without a request)."""
        return self.tclet is None

    @property
    def working(self) -> bool:
        """Whether it runs a tclet (the only connections the host does not evict)."""
        return self.tclet is not None and self.follow is not None and not self.follow.done()

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.client = peer_credentials(transport.get_extra_info("socket"))
        uid = self.client["uid"]
        if uid not in (os.getuid(), 0):
            self._fail(f"permission denied: uid {uid} is not this host's user", EXIT_USAGE)
        elif self._admit is not None:
            self._admit(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.frame_since is None:
            self.frame_since = time.monotonic()
        self._reader.push(data)
        if self._account():
            self._work()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.tclet is not None:
            self.tclet.output.hold(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.tclet is not None:
            self.tclet.output.hold(False)
        self._work()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tclet is not None and self.follow is not None and not self.follow.done():
            self.end("client went away", EXIT_TERMINATED)
        self._release()
        if self._turn is not None:
            self._turn.cancel()
        self._transport = None
        self._done(self)

    # ---- requests -----------------------------------------------------------------------------

    def _work(self) -> None:
        """Handle up to ``per_turn`` buffered frames; more wait for the next loop turn, with this
        connection's reading paused, so that one client's flood delays nobody else."""
        self._turn = None
        transport = self._transport
        if transport is None or self.closing:
            return
        for _ in range(self.bounds.per_turn):
            if self._write_paused and self.tclet is None:
                self._pause(transport)  # resume_writing takes it up again
                return
            if self._write_paused and transport.get_write_buffer_size() > MAX_QUEUED:
                self._fail(f"client does not read its replies ({MAX_QUEUED} bytes queued)")
                return
            try:
                frame = self._reader.next()
                if frame is None:
                    break
                self._take(*frame)
            except TcletdError as exc:
                self._fail(str(exc), exc.exit_status if self.tclet is None else EXIT_SOFTWARE)
                return
            except Exception as exc:  # the host goes on; the client learns it failed
                log.exception("control request failed")
                self._fail(f"internal error: {exc}", EXIT_SOFTWARE)
                return
            self.since = time.monotonic()
            self.frame_since = self.since if self._reader.partial else None
        else:
            self._pause(transport)
            self._turn = asyncio.get_running_loop().call_soon(self._work)
            self._account()
            return
        self._account()
        if self._paused:
            self._paused = False
            transport.resume_reading()

    def _pause(self, transport: asyncio.Transport) -> None:
        if not self._paused:
            self._paused = True
            transport.pause_reading()

    def _account(self) -> bool:
        """Count this connection's buffered bytes in the host's total; past the cap, fail it."""
        refusal = self._held.move(self._holding, self._reader.buffered)
        if refusal is not None:
            if self._bounds_audit is not None:
                self._bounds_audit("held_bytes", self.client, refusal)
            self._fail(refusal, EXIT_TEMPFAIL)
            return False
        self._holding = self._reader.buffered
        return True

    def _release(self) -> None:
        self._reader.clear()
        self._held.total, self._holding = self._held.total - self._holding, 0

    def _take(self, header: dict[str, Any], payload: bytes) -> None:
        """Hand the frame to the operation it names."""
        op = header.get("op")
        operation = OPERATIONS.get(op) if isinstance(op, str) else None
        try:
            if operation is None:
                raise NotAnOperation
            operation.handle(self, header, payload)
        except NotAnOperation:
            raise FrameError(unknown_op(op)) from None

    async def _follow(self, tclet: Tclet) -> None:
        result = await tclet.wait()
        self.send(
            {
                "event": "exit",
                "status": result.status,
                "reason": result.reason,
                "by_host": result.by_host,
            }
        )
        if self._transport is not None:
            self._transport.close()

    # ---- what operations do (ops.Session) -----------------------------------------------------

    def adopt(self, tclet: Tclet) -> None:
        self.tclet = tclet
        self.follow = asyncio.get_running_loop().create_task(self._follow(tclet))

    def output(self, stream: str) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            self.send({"event": stream}, data)

        return sink

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode(header, payload))

    def end(self, reason: str, status: int) -> None:
        assert self.tclet is not None
        task = asyncio.get_running_loop().create_task(self.tclet.end(reason, status))
        _ENDING.add(task)
        task.add_done_callback(_ENDING.discard)

    def _fail(self, message: str, status: int = EXIT_SOFTWARE) -> None:
        """Tell the client what was wrong and hang up; a running tclet ends with the link.

        Half-close first: closing with the client's unread bytes still queued here would send
        a reset that can overtake the error. Whatever else it sends is ignored; the link goes
        when the client closes, or after FAILED_LINGER seconds.
        """
        self.closing = True
        self._release()
        self.send({"event": "error", "message": message, "status": status})
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._paused:
                self._paused = False
                transport.resume_reading()  # to see the client's close
            transport.write_eof()
            asyncio.get_running_loop().call_later(FAILED_LINGER, transport.close)

    def hang_up(self, message: str) -> None:
        """Evict or refuse: tell the client why and close now (its slot is wanted)."""
        self.closing = True
        self._release()
        self.send({"event": "error", "message": message, "status": EXIT_TEMPFAIL})
        if self._transport is not None:
            self._transport.close()  # after what is queued: the error goes first


_ENDING: set[asyncio.Task[None]] = set()  # strong references to end tasks until they finish


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
            self._take_socket(sock, starved=False)

    def _take_socket(self, sock: socket.socket, *, starved: bool) -> None:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        factory = functools.partial(self._connection, starved)
        task = loop.create_task(loop.connect_accepted_socket(factory, sock))
        self._accepting.add(task)
        task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task[Any]) -> None:
        self._accepting.discard(task)
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
            self.host, self._gone, self.bounds, self.held, self._admit, self.audit
        )
        conn.starved = starved
        return conn

    def _gone(self, conn: ControlConnection) -> None:
        self._connections.pop(conn, None)
        # Its transport closes the socket right after telling us: take the descriptor then.
        asyncio.get_running_loop().call_soon(self._descriptor_free)

    def _descriptor_free(self) -> None:
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
        slots = sum(1 for c in self._connections if not c.closing)  # those leaving hold none
        if not starved and slots <= self.bounds.max_connections:
            return True
        victim = victim_for(conn, self._connections)
        if victim is not None:
            why = "the host was out of descriptors" if starved else "the host was full"
            what = "half a frame sent" if victim.frame_since is not None else "idle"
            self._close("evicted", victim, f"evicted: {what} while {why}")
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
