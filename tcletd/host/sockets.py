"""A tclet's granted sockets as the host keeps them.

Host side of the trust boundary. For each tclet the host holds the duplicate of every connected
socket it handed over (to revoke it, count its bytes and pace it) and the listening sockets
themselves (the tclet only ever gets accepted connections). :class:`SocketTable` names them with
the ids the worker sees, hands a descriptor over on the worker's socketpair together with the
message that names it, frees a quota slot the moment the tclet reports a close, and stops
watching a server for a back-off while the host lacks the descriptors to accept on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from tcletd.host.broker import FdChannel, shut
from tcletd.host.quotas import TcletQuotas
from tcletd.shared import protocol as p
from tcletd.shared.errors import ProtocolViolation

Accepting = Callable[[int, socket.socket], None]

# A listener whose accept failed for want of descriptors (or kernel memory) stays readable, so a
# loop still watching it calls its reader again at once, every turn: the host spun at 100 % CPU
# for as long as the shortage lasted. It is unwatched for this long instead, doubling up to the
# maximum while the shortage persists; its peers wait in the kernel's backlog meanwhile.
ACCEPT_PAUSE = 0.1
ACCEPT_PAUSE_MAX = 1.0


class SocketTable:
    """One tclet's connected duplicates and listening sockets, by the ids its worker knows."""

    def __init__(self, loop: asyncio.AbstractEventLoop, quotas: TcletQuotas) -> None:
        self._loop = loop
        self._quotas = quotas
        self.connected: dict[int, socket.socket] = {}
        self.listening: dict[int, list[socket.socket]] = {}
        self._next = 1
        self._fds: FdChannel | None = None
        self._on_ready: dict[int, Accepting] = {}
        self._pauses: dict[socket.socket, float] = {}  # the next pause, while in a shortage
        self._resumes: dict[socket.socket, asyncio.TimerHandle] = {}
        self._closing: list[tuple[int, socket.socket]] = []  # closed by the tclet, to shut

    def attach(self, fdsock: socket.socket) -> None:
        """The host's end of the worker's descriptor socketpair."""
        self._fds = FdChannel(fdsock)

    def _new_id(self) -> int:
        sock_id = self._next
        self._next += 1
        return sock_id

    def hand_over(
        self, sock: socket.socket, message: Callable[[int], p.Granted | p.Accepted]
    ) -> int:
        """Give the worker ``sock`` with the message naming it; the host keeps a duplicate.

        Raises ProtocolViolation when the worker is not taking its descriptors.
        """
        assert self._fds is not None
        sock_id = self._new_id()
        self._quotas.track(sock_id, sock)  # meter and pace before the worker has it
        try:
            self._fds.hand_over(message(sock_id), sock)
        except OSError as exc:
            self._quotas.untrack(sock_id)
            shut(sock)
            raise ProtocolViolation(f"not taking its descriptors ({exc})") from None
        self.connected[sock_id] = sock
        return sock_id

    def listen(self, socks: list[socket.socket], on_ready: Accepting) -> int:
        """Keep a tclet's listening sockets and accept on them with ``on_ready(id, sock)``."""
        sock_id = self._new_id()
        self.listening[sock_id] = socks
        self._on_ready[sock_id] = on_ready
        for sock in socks:
            self._loop.add_reader(sock.fileno(), on_ready, sock_id, sock)
        return sock_id

    def pause_accepting(self, sock_id: int, sock: socket.socket) -> bool:
        """Accepting on ``sock`` failed for want of a resource: stop watching it for a back-off
        (:data:`ACCEPT_PAUSE`, doubling to :data:`ACCEPT_PAUSE_MAX`), then watch it again if it
        is still open. True when this starts a shortage (the caller audits it once)."""
        if sock not in self.listening.get(sock_id, ()) or sock in self._resumes:
            return False  # closed meanwhile, or already paused
        starts = sock not in self._pauses
        pause = self._pauses.get(sock, ACCEPT_PAUSE)
        self._pauses[sock] = min(pause * 2, ACCEPT_PAUSE_MAX)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock.fileno())
        self._resumes[sock] = self._loop.call_later(pause, self._resume, sock_id, sock)
        return starts

    def accepted(self, sock: socket.socket) -> None:
        """Accepting on ``sock`` emptied its backlog: a shortage it was in is over."""
        self._pauses.pop(sock, None)

    def _resume(self, sock_id: int, sock: socket.socket) -> None:
        self._resumes.pop(sock, None)
        on_ready = self._on_ready.get(sock_id)
        if on_ready is not None and sock in self.listening.get(sock_id, ()):
            self._loop.add_reader(sock.fileno(), on_ready, sock_id, sock)

    def close(self, sock_id: int) -> None:
        """The tclet closed a socket: free its slot at once; count its last bytes and close the
        host's duplicate once the requests that came with it are answered (this loop turn)."""
        sock = self.connected.pop(sock_id, None)
        if sock is not None:
            self._quotas.free_slot()
            # A tclet's Close usually arrives just ahead of its next request, in the same
            # drain: the TCP_INFO read and the close (the FIN goes out in it) took ~35 us that
            # the request waited for. The duplicate is closed by the end of this turn.
            self._closing.append((sock_id, sock))
            if len(self._closing) == 1:
                if self._loop.is_closed():  # the host is going: now, not never
                    self._close_pending()
                else:
                    self._loop.call_soon(self._close_pending)
            return
        listeners = self.listening.pop(sock_id, None)
        if listeners is None:
            return  # not one of its sockets (or closed already): frees nothing
        self._on_ready.pop(sock_id, None)
        for listener in listeners:
            self._stop_accepting(listener)
        self._quotas.free_slot()

    def _close_pending(self) -> None:
        """Count the last bytes of the sockets the tclet closed, then close their duplicates."""
        closing, self._closing = self._closing, []
        for sock_id, sock in closing:
            self._quotas.untrack(sock_id)
            shut(sock)

    def stop_accepting(self) -> None:
        """Close every listening socket; the slots stay taken until the tclet closes them."""
        for sock_id, socks in self.listening.items():
            for sock in socks:
                self._stop_accepting(sock)
            self.listening[sock_id] = []

    def _stop_accepting(self, sock: socket.socket) -> None:
        resume = self._resumes.pop(sock, None)
        if resume is not None:  # paused for a shortage: it must not be watched again
            resume.cancel()
        self._pauses.pop(sock, None)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock.fileno())
        shut(sock)

    def release(self) -> None:
        """Close every duplicate and listener (the worker has ended)."""
        self._close_pending()
        for sock_id, sock in self.connected.items():
            self._quotas.untrack(sock_id)
            shut(sock)
        self.connected.clear()
        self.stop_accepting()
        self.listening.clear()
        self._on_ready.clear()
