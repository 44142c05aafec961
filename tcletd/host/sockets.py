"""A tclet's granted sockets as the host keeps them.

Host side of the trust boundary. For each tclet the host holds the duplicate of every connected
socket it handed over (to revoke it, count its bytes and pace it) and the listening sockets
themselves (the tclet only ever gets accepted connections). :class:`SocketTable` names them with
the ids the worker sees, hands a descriptor over on the worker's socketpair together with the
message that names it, and frees a quota slot the moment the tclet reports a close.
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


class SocketTable:
    """One tclet's connected duplicates and listening sockets, by the ids its worker knows."""

    def __init__(self, loop: asyncio.AbstractEventLoop, quotas: TcletQuotas) -> None:
        self._loop = loop
        self._quotas = quotas
        self.connected: dict[int, socket.socket] = {}
        self.listening: dict[int, list[socket.socket]] = {}
        self._next = 1
        self._fds: FdChannel | None = None

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
        for sock in socks:
            self._loop.add_reader(sock.fileno(), on_ready, sock_id, sock)
        return sock_id

    def close(self, sock_id: int) -> None:
        """The tclet closed a socket: count its last bytes and free its slot at once."""
        sock = self.connected.pop(sock_id, None)
        if sock is not None:
            self._quotas.untrack(sock_id)
            shut(sock)
            self._quotas.free_slot()
            return
        listeners = self.listening.pop(sock_id, None)
        if listeners is None:
            return  # not one of its sockets (or closed already): frees nothing
        for listener in listeners:
            self._stop_accepting(listener)
        self._quotas.free_slot()

    def stop_accepting(self) -> None:
        """Close every listening socket; the slots stay taken until the tclet closes them."""
        for sock_id, socks in self.listening.items():
            for sock in socks:
                self._stop_accepting(sock)
            self.listening[sock_id] = []

    def _stop_accepting(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock.fileno())
        shut(sock)

    def release(self) -> None:
        """Close every duplicate and listener (the worker has ended)."""
        for sock_id, sock in self.connected.items():
            self._quotas.untrack(sock_id)
            shut(sock)
        self.connected.clear()
        self.stop_accepting()
        self.listening.clear()
