"""The resident host's control endpoint (``tcletd serve``): clients launch, follow and end tclets.

Host side of the trust boundary, facing the operator's clients (:mod:`tcletd.cli.client` is the
other end; :mod:`tcletd.shared.control` defines the frames). A client is trusted as the operator
only once the kernel says it runs as the host's own user or root (``SO_PEERCRED``); the socket
itself lives in a 0700 directory. Every frame is still checked: a malformed one gets an error
naming the field and the connection is closed, and nothing is launched. This module frames and
dispatches; what each ``op`` does is its operation's, in the registry of :mod:`tcletd.host.ops`.

One connection runs at most one tclet, and the tclet lives as long as the connection: a client
that goes away takes its tclet with it (``client went away``), the way a page closed in a
browser took its tclet. Output is relayed as frames; when a client reads slower than its tclet
writes, the host stops reading that tclet's output (the worker's writes then block) instead of
buffering for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcletd.host.host import Host
from tcletd.host.ops import OPERATIONS, NotAnOperation, unknown_op
from tcletd.host.tclet import Tclet
from tcletd.shared.control import MAX_SCRIPT, FrameError, FrameReader, encode
from tcletd.shared.errors import EXIT_SOFTWARE, EXIT_USAGE, TcletdError
from tcletd.shared.states import EXIT_TERMINATED

log = logging.getLogger(__name__)

# Output frames queued for a client before the host stops reading its tclet's output.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Seconds a refused client's link stays half-closed before the host closes it.
FAILED_LINGER = 5.0


def peer_credentials(sock: socket.socket) -> dict[str, int]:
    """The connected client's ``pid`` and ``uid``, as the kernel saw them at connect."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return {"pid": pid, "uid": uid}


class ControlConnection(asyncio.Protocol):
    """One client: at most one run, status answers, signals passed on to its tclet (the
    :class:`~tcletd.host.ops.Session` its operations act on)."""

    def __init__(self, host: Host, done: Callable[[ControlConnection], None]) -> None:
        self.host = host
        self._done = done
        self._reader = FrameReader(MAX_SCRIPT)
        self._transport: asyncio.Transport | None = None
        self.tclet: Tclet | None = None
        self.follow: asyncio.Task[None] | None = None
        self._failed = False
        self.client: dict[str, int] = {}

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.client = peer_credentials(transport.get_extra_info("socket"))
        uid = self.client["uid"]
        if uid not in (os.getuid(), 0):
            self._fail(f"permission denied: uid {uid} is not this host's user", EXIT_USAGE)

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            for header, payload in self._reader.feed(data):
                self._take(header, payload)
        except TcletdError as exc:
            self._fail(str(exc), exc.exit_status if self.tclet is None else EXIT_SOFTWARE)
        except Exception as exc:  # the host goes on; the client learns it failed
            log.exception("control request failed")
            self._fail(f"internal error: {exc}", EXIT_SOFTWARE)

    def pause_writing(self) -> None:
        if self.tclet is not None:
            self.tclet.output.hold(True)

    def resume_writing(self) -> None:
        if self.tclet is not None:
            self.tclet.output.hold(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tclet is not None and self.follow is not None and not self.follow.done():
            self.end("client went away", EXIT_TERMINATED)
        self._transport = None
        self._done(self)

    # ---- requests -----------------------------------------------------------------------------

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

    def _fail(self, message: str, status: int) -> None:
        """Tell the client what was wrong and hang up; a running tclet ends with the link.

        Half-close first: closing with the client's unread bytes still queued here would send
        a reset that can overtake the error. Whatever else it sends is ignored; the link goes
        when the client closes, or after FAILED_LINGER seconds.
        """
        self._failed = True
        self.send({"event": "error", "message": message, "status": status})
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write_eof()
            asyncio.get_running_loop().call_later(FAILED_LINGER, transport.close)


_ENDING: set[asyncio.Task[None]] = set()  # strong references to end tasks until they finish


class ControlServer:
    """The Unix socket ``tcletd serve`` listens on, and the connections it has."""

    def __init__(self, host: Host, path: Path) -> None:
        self.host = host
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[ControlConnection] = set()

    async def start(self) -> None:
        _claim(self.path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connection, str(self.path))
        self.path.chmod(0o600)

    def _connection(self) -> ControlConnection:
        conn = ControlConnection(self.host, self._connections.discard)
        self._connections.add(conn)
        return conn

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def drain(self, timeout: float = 2.0) -> None:
        """Let every client see its tclet's exit (after the host has ended them)."""
        follows = [c.follow for c in list(self._connections) if c.follow is not None]
        if follows:
            await asyncio.wait(follows, timeout=timeout)


def _claim(path: Path) -> None:
    """Make the socket's directory (0700) and take the path, unless a host answers there."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.parent.stat()
    # A directory others may write to without the sticky bit lets them swap our socket.
    if info.st_uid not in (os.getuid(), 0) or (info.st_mode & 0o022 and not info.st_mode & 0o1000):
        raise TcletdError(f"{path.parent}: others can replace files there; use a private directory")
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: its host is gone
        else:
            raise TcletdError(f"{path}: a tcletd host is already serving there")
        finally:
            probe.close()
