"""The host's end of the control plane: one ZeroMQ ROUTER on ``ipc://`` in the private run dir.

Host side of the trust boundary: every frame that arrives here comes from a worker that shares
its process with untrusted code, so it is hostile until proven otherwise. A frame is accepted
only from a routing id the host launched (a tclet's id, or the one it chose for the warm child
that a launch claimed), only after that worker's hello carried its one-time token, and only if
it decodes as a worker message; anything else ends the worker (through the ``on_violation``
callback) and the host goes on. A warm child's identity reaches no tclet, and is sent nothing,
before a launch claims it (:meth:`Hub.reroute`).

The ROUTER is a plain (blocking-API) pyzmq socket driven from asyncio with ``add_reader`` on
``zmq.FD``: cheaper per message than zmq.asyncio (measured here: a round trip is ~175 µs with
the blocking API on both ends, ~250-310 µs with asyncio on either side). The FD is
edge-triggered, so every wake-up drains until ``zmq.Again`` and every send re-checks ``EVENTS``.

Fairness: a worker that floods the host cannot slow the others. The ROUTER fair-queues its
inbound pipes (libzmq reads one message from each peer with something pending, in turn), so a
drain reads the workers round robin; it stops after ``BATCH`` frames per registered worker and
reschedules itself with ``call_soon``, so the rest of the loop (output, accepts, the watchdog)
runs in between. What a flooding worker sends beyond its share waits in its own pipe, bounded by
the receive high-water mark, and pushes back on that worker alone. Every frame costs bounded work
(``MAXMSGSIZE``, one request in flight per worker, decoded into a typed message or refused).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import zmq

from tcletd.shared import protocol as p

# Frames from one worker handled per loop turn before others get their turn (fairness).
BATCH = 64
# Plain ints: pyzmq's enum flags cost a few microseconds per use on the request path.
_EVENTS, _POLLIN, _NOBLOCK, _RCVMORE = (
    int(zmq.EVENTS),
    int(zmq.POLLIN),
    int(zmq.NOBLOCK),
    int(zmq.RCVMORE),
)


@dataclass
class Peer:
    """What the hub knows about one launched worker."""

    tclet_id: str
    token: str
    on_message: Callable[[p.WorkerMessage], None]
    on_violation: Callable[[str], None]
    greeted: bool = False


class Hub:
    """Routes worker messages to their tclets and host messages to their workers."""

    def __init__(self, endpoint: str, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self._loop = loop
        self._ctx = zmq.Context(io_threads=1)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.ROUTER_HANDOVER, 0)
        self._router.setsockopt(zmq.LINGER, 0)
        # A frame larger than any legitimate worker message is a violation, not a buffer.
        self._router.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        self._router.bind(endpoint)
        self._peers: dict[bytes, Peer] = {}  # by routing identity
        self._routes: dict[str, bytes] = {}  # a tclet's id to its worker's routing identity
        fd = self._router.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._fd: int = fd
        loop.add_reader(fd, self._drain)
        self._drain_pending = False

    def register(self, peer: Peer) -> None:
        """Expect ``peer``'s worker under its tclet's id (until :meth:`reroute`)."""
        ident = peer.tclet_id.encode()
        self._peers[ident] = peer
        self._routes[peer.tclet_id] = ident

    def reroute(self, tclet_id: str, ident: bytes) -> bool:
        """The worker of ``tclet_id`` is a warm child, connected ahead as ``ident`` (which the
        host chose for it and never hands out again): its frames are that tclet's from now on,
        and none under the tclet's id is. Called in the launch, before the loop reads a frame;
        False (nothing changed) if the tclet is not waiting for its hello or ``ident`` is
        taken."""
        old = self._routes.get(tclet_id)
        peer = self._peers.get(old) if old is not None else None
        if old is None or peer is None or peer.greeted or ident in self._peers:
            return False
        del self._peers[old]
        self._peers[ident] = peer
        self._routes[tclet_id] = ident
        return True

    def unregister(self, tclet_id: str) -> None:
        ident = self._routes.pop(tclet_id, None)
        if ident is not None:
            self._peers.pop(ident, None)

    def send(self, tclet_id: str, msg: msgspec.Struct) -> bool:
        """Send to a worker; False when it cannot take it (gone or not reading)."""
        ident = self._routes.get(tclet_id)
        if ident is None:
            return False  # nothing is sent to a routing identity the host does not route to
        try:
            self._router.send_multipart([ident, p.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        finally:
            self._schedule_drain()
        return True

    def drain(self) -> None:
        """Deliver whatever frames have arrived, now (e.g. a worker's last words at its exit)."""
        self._drain()

    def _schedule_drain(self) -> None:
        if not self._drain_pending and int(self._router.getsockopt(_EVENTS)) & _POLLIN:
            self._drain_pending = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_pending = False
        handled = 0
        # EVENTS rather than recv until zmq.Again: the exception costs more than the look.
        router = self._router
        while int(router.getsockopt(_EVENTS)) & _POLLIN:
            try:
                frames = [router.recv(_NOBLOCK)]
                while router.getsockopt(_RCVMORE):
                    frames.append(router.recv(_NOBLOCK))
            except zmq.Again:
                return
            self._deliver(frames)
            handled += 1
            if handled >= BATCH * max(1, len(self._peers)):
                # Let the rest of the loop run; the edge is gone, so come back on our own.
                self._drain_pending = True
                self._loop.call_soon(self._drain)
                return

    def _deliver(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            peer = self._peers.get(frames[0]) if frames else None
            if peer is not None:
                peer.on_violation(f"malformed frame count {len(frames)}")
            return
        ident, payload = frames
        peer = self._peers.get(ident)
        if peer is None:
            return  # not a worker we launched (or one already ended): nothing to end
        try:
            msg = p.WORKER_DECODER.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            peer.on_violation(f"undecodable message: {exc}")
            return
        if not peer.greeted:
            if not isinstance(msg, p.Hello) or not hmac.compare_digest(
                msg.token.encode(), peer.token.encode()
            ):
                peer.on_violation("first message was not a hello with the launch token")
                return
            peer.greeted = True
        elif isinstance(msg, p.Hello):
            peer.on_violation("second hello")
            return
        peer.on_message(msg)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self._router.close(linger=0)
        self._ctx.term()
