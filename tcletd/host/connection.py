"""One client of the resident host's control endpoint: its frames, dispatched to operations.

Host side of the trust boundary, facing the operator's clients (:mod:`tcletd.cli.client` is the
other end; :mod:`tcletd.shared.control` defines the frames; docs/protocol.md documents them). A
client is trusted as the operator only once the kernel says it runs as the host's own user or
root (``SO_PEERCRED``). Every frame is still checked: a malformed one gets an error naming the
field and the connection is closed, and nothing is launched. The host greets each connection
with its protocol version, and the client's first frame must be a ``hello`` naming the same
version: a client written for another version learns so before anything is done for it.

A connection runs at most one attached tclet (``run``), which lives as long as the connection: a
client that goes away takes its tclet with it (``client went away``). Detached tclets (``launch``)
are the host's. Output is relayed as frames; when a client reads slower than its tclet writes,
the host stops reading that tclet's output (the worker's writes then block) instead of buffering
for it. Streaming requests (``wait``, ``logs --follow``, ``events --follow``) run as tasks of the
connection, ended with it, and write only while the client keeps up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tcletd import __version__
from tcletd.host.bounds import Bounds, Held
from tcletd.host.control_audit import ControlAudit
from tcletd.host.host import Host
from tcletd.host.ops import OPERATIONS, NotAnOperation, unknown_op
from tcletd.host.pacing import Allowance, Endpoint, Peers, cost
from tcletd.host.tclet import Tclet
from tcletd.shared.control import MAX_SCRIPT, PROTOCOL, FrameError, FrameReader, encode
from tcletd.shared.errors import EXIT_SOFTWARE, EXIT_TEMPFAIL, EXIT_USAGE, TcletdError
from tcletd.shared.states import EXIT_TERMINATED

log = logging.getLogger(__name__)

# Seconds of frames one connection's turn handles before the next turn takes the rest: a
# launch costs the host ~0.3-0.5 ms, so a client's burst of launches stalls the loop for about
# one launch at a time, interleaved with the running tclets' requests.
TURN_BUDGET = 0.0005
# Output frames queued for a client before the host stops reading its tclet's output.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Replies queued for a client that runs a tclet and does not read them (a flood of status
# requests); its tclet's output alone stays near HIGH_WATER, held at the relay.
MAX_QUEUED = 8 * 1024 * 1024
# Requests in progress at once on one connection (waits, follows, fetches).
MAX_STREAMING = 16
# Seconds a refused client's link stays half-closed before the host closes it.
FAILED_LINGER = 5.0


def peer_credentials(sock: socket.socket) -> dict[str, int]:
    """The connected client's ``pid`` and ``uid``, as the kernel saw them at connect."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return {"pid": pid, "uid": uid}


class ControlConnection(asyncio.Protocol):
    """One client: its requests, at most one attached run, signals passed on to its tclet, and
    its streaming requests (the :class:`~tcletd.host.ops.Session` its operations act on)."""

    def __init__(
        self,
        host: Host,
        done: Callable[[ControlConnection], None],
        bounds: Bounds | None = None,
        held: Held | None = None,
        admit: Callable[[ControlConnection], bool] | None = None,
        audit: ControlAudit | None = None,
        endpoint: Endpoint | None = None,
        peers: Peers | None = None,
    ) -> None:
        """``done`` is told when the connection is gone; ``admit``, when it is made, whether it
        may stay (it was told why not); ``audit`` records the bounds' closings; ``endpoint`` is
        the host time all the endpoint's connections may take, ``peers`` what each client
        process has spent, its place in the endpoint's line (tcletd.host.pacing)."""
        self.host = host
        self._bounds_audit = audit
        self._done = done
        self._admit = admit
        self.bounds = bounds or Bounds()
        self._held = held or Held(self.bounds.max_held)
        self._holding = 0  # this connection's part of _held
        now = time.monotonic()
        bounds = self.bounds
        self._allowance = Allowance(bounds.client_share, bounds.burst, now)
        self._endpoint = endpoint or Endpoint(bounds.endpoint_share, bounds.burst, now)
        self._peers = peers if peers is not None else Peers(bounds.client_share, bounds.burst)
        self._peer: tuple[int, Allowance] | None = None  # its process's spending, once made
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
        self.greeted = False  # its hello has come, naming our protocol version
        self.pending = False  # a run's script is being fetched: no second run
        self.replies_due = 0  # launches whose reply waits for their worker's fork
        self.queued = False  # past an allowance, its frames waiting their turn (tcletd.host.pacing)
        self._tasks: set[asyncio.Task[None]] = set()  # its streaming requests
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def idle(self) -> bool:
        """Whether it has no tclet, no streaming request and no reply due (it may be closed after
        ``idle_deadline`` without a request)."""
        # A client waiting for replies is not idle: a burst's forks can take longer than the
        # idle deadline on a machine busy starting the burst (3,000 launches at once here).
        waiting = self.pending or self.replies_due or self.queued
        return self.tclet is None and not self._tasks and not waiting

    @property
    def working(self) -> bool:
        """Whether it runs a tclet or a streaming request, or its requests wait their turn for
        the host's time (the connections the host does not evict: a client paced behind a flood
        would otherwise be the one idle the longest, under a slowloris's churn)."""
        running = self.tclet is not None and self.follow is not None and not self.follow.done()
        return running or bool(self._tasks) or self.pending or self.queued

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.client = peer_credentials(transport.get_extra_info("socket"))
        pid = self.client["pid"]
        self._peer = (pid, self._peers.take(pid, time.monotonic()))
        uid = self.client["uid"]
        if uid not in (os.getuid(), 0):
            self._fail(f"permission denied: uid {uid} is not this host's user", EXIT_USAGE)
            return
        self.send({"event": "hello", "protocol": PROTOCOL, "tcletd": __version__})
        if self._admit is not None:
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
        self._writable.clear()
        if self.tclet is not None:
            self.tclet.output.hold(True, self)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._writable.set()
        if self.tclet is not None:
            self.tclet.output.hold(False, self)
        self._work()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tclet is not None:
            self.tclet.output.hold(False, self)
        if self.tclet is not None and self.follow is not None and not self.follow.done():
            self.end("client went away", EXIT_TERMINATED)
        for task in list(self._tasks):
            task.cancel()
        self._release()
        self._endpoint.forget(self)
        if self._peer is not None:
            self._peers.give_back(self._peer[0])
            self._peer = None
        if self._turn is not None:
            self._turn.cancel()
        self._transport = None
        self._done(self)

    # ---- requests -----------------------------------------------------------------------------

    def _work(self) -> None:
        """Handle up to ``per_turn`` buffered frames, or TURN_BUDGET of them; more wait for the
        next loop turn, with this connection's reading paused, so that one client's flood delays
        nobody else. Past its allowance of host time, or the endpoint's, it waits until the
        allowance is back."""
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        transport = self._transport
        if transport is None or self.closing:
            return
        now = time.monotonic()
        wait = self._allowance.due(now)
        if wait > 0:
            self._turn = asyncio.get_running_loop().call_later(wait, self._work)
        elif self._endpoint.admits(self, now):
            self._handle(transport)
            return
        self._pause(transport)
        self.queued = True
        self.frame_since = None  # its frames wait on the host, not on the client

    def left(self, now: float) -> float:
        return (self._allowance if self._peer is None else self._peer[1]).left(now)

    def go(self) -> None:
        if self._transport is not None and not self.closing:
            self._handle(self._transport)

    def _handle(self, transport: asyncio.Transport) -> None:
        self.queued = False
        began, more, handled = time.perf_counter(), True, 0
        now = time.monotonic()
        # What the turn may spend: past it, the connection owes at most its last frame.
        left = min(self._allowance.left(now), self._endpoint.allowance.left(now))
        for _ in range(self.bounds.per_turn):
            spent = time.perf_counter() - began
            if spent > TURN_BUDGET or cost(spent, handled) >= left:
                break  # the rest on the next turn, after everyone else's (a burst of launches)
            if self._write_paused and self.tclet is None:
                self._pause(transport)  # resume_writing takes it up again
                return
            if self._write_paused and transport.get_write_buffer_size() > MAX_QUEUED:
                self._fail(f"client does not read its replies ({MAX_QUEUED} bytes queued)")
                return
            try:
                frame = self._reader.next()
                if frame is None:
                    more = False
                    break
                # A hello is charged only its time: a flood of connections that each say hello
                # (a slowloris churning) must not spend the endpoint's allowance for everyone.
                handled += frame[0].get("op") != "hello"
                self._take(*frame)
            except Exception as exc:  # the host goes on; the client learns it failed
                self._refuse(exc)
                return
            self.since = time.monotonic()
            self.frame_since = self.since if self._reader.partial else None
        charged, now = cost(time.perf_counter() - began, handled), time.monotonic()
        self._allowance.charge(charged, now)
        self._endpoint.charge(charged, now)
        if self._peer is not None:
            self._peer[1].charge(charged, now)
        if more:
            self._pause(transport)
            # The frames left wait on the host, not on the client: a burst the host is slow to
            # take (a thousand launches) must not run out the client's frame deadline.
            self.frame_since = None
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
        """Hand the frame to the operation it names (the first must be a hello)."""
        op = header.get("op")
        if not self.greeted and op != "hello":
            raise FrameError(
                f'expected a hello frame first ({{"op":"hello","protocol":{PROTOCOL}}}), '
                f"got op {str(op)[:40]!r}"
            )
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
                "id": tclet.id,
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
        self.send_frame(encode(header, payload))

    def send_frame(self, frame: bytes) -> None:
        # Not once failed: its write side is shut (write_eof), and a frame decided before the
        # failure may still come (a launch's reply waits for the fork).
        if self._transport is not None and not self._transport.is_closing() and not self.closing:
            self._transport.write(frame)

    async def drained(self) -> None:
        """Until the client has taken what was sent it, down to the low-water mark."""
        await self._writable.wait()

    def spawn(self, request: Coroutine[Any, Any, None]) -> None:
        """Run a streaming request as a task of this connection (cancelled with it); what it
        raises as a TcletdError goes back to the client as an error. At most MAX_STREAMING at
        once: each holds a follower and its queue, so a client may not pile them up."""
        if len(self._tasks) >= MAX_STREAMING:
            request.close()
            raise FrameError(
                f"too many requests in progress on this connection (at most {MAX_STREAMING})"
            )
        task = asyncio.get_running_loop().create_task(self._guarded(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, request: Coroutine[Any, Any, None]) -> None:
        try:
            await request
        except Exception as exc:  # the host goes on; the client learns it failed
            self._refuse(exc)
        finally:
            self.since = time.monotonic()

    def _refuse(self, exc: Exception) -> None:
        """A request failed: a TcletdError is the client's answer, with its status (70 once a
        run has started: the client's tclet ends with the link); anything else is the host's
        own failure, logged."""
        if isinstance(exc, TcletdError):
            self._fail(str(exc), exc.exit_status if self.tclet is None else EXIT_SOFTWARE)
        else:
            log.error("control request failed", exc_info=exc)
            self._fail(f"internal error: {exc}", EXIT_SOFTWARE)

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
        self._release()
        self.send({"event": "error", "message": message, "status": status})
        self.closing = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._paused:
                self._paused = False
                transport.resume_reading()  # to see the client's close
            transport.write_eof()
            asyncio.get_running_loop().call_later(FAILED_LINGER, transport.close)

    def hang_up(self, message: str) -> None:
        """Evict or refuse: tell the client why and close now (its slot is wanted)."""
        self._release()
        self.send({"event": "error", "message": message, "status": EXIT_TEMPFAIL})
        self.closing = True
        if self._transport is not None:
            self._transport.close()  # after what is queued: the error goes first


_ENDING: set[asyncio.Task[None]] = set()  # strong references to end tasks until they finish
