"""The local servers that attacks and probes need, each in a process of its own.

On the tool's side of the trust boundary; what the servers read comes from hostile tclets, and
they treat it as bytes to echo or drop, never as commands. Each server runs as
``python -m tcletd.attack.servers KIND ADDRESS...`` (a ``subprocess``, not ``multiprocessing``:
nothing is pickled, no start method re-imports the tool's ``__main__``, and the child is one
PID the tool owns and ends). A server under attack (thousands of connections, a client that
never reads) therefore never competes with the tool's event loop or GIL, and the probe's echo
server is a process apart from the one attacks use. Each child serves every socket from one
``epoll`` loop with non-blocking sockets: a connection costs a descriptor and a small buffer,
no thread. The probe's echo server runs on every CPU, as the probe may; the others stay on the
tool's CPUs, off the one a resident host leaves to tclets (:mod:`tcletd.shared.cpus`).

The child's stdin and stdout are its control line: it prints ``ready PORT...`` once bound, then
answers ``count`` (its counter) and ``reset`` one line each. Its stdin reaching end of file (the
tool closed it, or the tool died) ends it, so no server outlives the tool; ``ServerSet`` closes
it at exit and kills whatever is still there after a short grace, by PID.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from tcletd.shared import cpus

LISTENER_HOST = "127.0.0.3"  # Linux routes all of 127.0.0.0/8 to lo: no set-up needed
CHUNK = 65536
ECHO_BUFFER_MAX = 1 << 20  # per connection: past it the echo server stops reading that client
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of descriptors
READY_TIMEOUT = 15.0  # a loaded 2-core machine can take seconds to start a Python process
ANSWER_TIMEOUT = 5.0
EXIT_GRACE = 1.0
STDIN = 0
# The sender's stream: 64-byte lines, so a reader that uses gets sees lines.
SENDER_DATA = (b"x" * 63 + b"\n") * (CHUNK // 64)


class ServerError(RuntimeError):
    """A server did not start, or stopped answering its control line."""


# ---- the child: one server, one epoll loop ------------------------------------------------------


class _Server:
    """The loop every kind shares: accept, dispatch each connection's events, answer control
    lines. Kinds override ``on_accept``, ``on_event``, ``count`` and ``reset``."""

    def __init__(self, listeners: list[socket.socket]) -> None:
        self.epoll = select.epoll()
        self.listeners = {s.fileno(): s for s in listeners}
        self.conns: dict[int, socket.socket] = {}
        self.masks: dict[int, int] = {}
        self.accept_paused_until = 0.0
        self.control = bytearray()
        for listener in listeners:
            listener.setblocking(False)
            self.epoll.register(listener.fileno(), select.EPOLLIN)
        os.set_blocking(STDIN, False)
        self.epoll.register(STDIN, select.EPOLLIN)

    def run(self) -> None:
        while True:
            timeout = -1.0
            if self.accept_paused_until:
                timeout = max(0.0, self.accept_paused_until - time.monotonic())
            for fd, events in self.epoll.poll(timeout):
                if fd == STDIN:
                    if not self.read_control():
                        return
                elif fd in self.listeners:
                    self.accept(self.listeners[fd], limit=64)
                elif fd in self.conns:
                    self.on_event(fd, events)
            if self.accept_paused_until and time.monotonic() >= self.accept_paused_until:
                self.accept_paused_until = 0.0
                for fd in self.listeners:
                    self.epoll.register(fd, select.EPOLLIN)

    def accept(self, listener: socket.socket, limit: int) -> None:
        """Accept up to ``limit`` waiting connections (0: all of them)."""
        n = 0
        while not limit or n < limit:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.pause_accepting()
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client is gone already; the next one may be fine
                raise
            n += 1
            self.on_accept(conn)

    def pause_accepting(self) -> None:
        # A level-triggered listener with no descriptor to accept into would spin the loop:
        # stop watching it until some connections have gone.
        if not self.accept_paused_until:
            for fd in self.listeners:
                self.epoll.unregister(fd)
        self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE

    def hold(self, conn: socket.socket, mask: int) -> None:
        conn.setblocking(False)
        fd = conn.fileno()
        self.conns[fd], self.masks[fd] = conn, mask
        self.epoll.register(fd, mask)

    def watch(self, fd: int, mask: int) -> None:
        if self.masks.get(fd) != mask:
            self.masks[fd] = mask
            self.epoll.modify(fd, mask)

    def drop(self, fd: int) -> None:
        conn = self.conns.pop(fd)
        self.masks.pop(fd, None)
        self.epoll.unregister(fd)
        conn.close()

    def read_control(self) -> bool:
        """Answer every whole control line read; False at end of file (time to go)."""
        try:
            data = os.read(STDIN, 4096)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.control += data
        while b"\n" in self.control:
            line, _, rest = self.control.partition(b"\n")
            self.control = bytearray(rest)
            command = line.decode("ascii", "replace").strip()
            if command == "count":
                answer = str(self.count())
            elif command == "reset":
                self.reset()
                answer = "ok"
            else:
                answer = f"error: unknown command {command!r}"
            os.write(1, answer.encode() + b"\n")
        return True

    def on_accept(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def on_event(self, fd: int, events: int) -> None:
        self.drop(fd)

    def count(self) -> int:
        return len(self.conns)

    def reset(self) -> None:
        """Nothing to reset by default: the count is what is held now."""


class _Echo(_Server):
    """Echoes every byte; counts the most connections held at once. A client that sends and
    never reads fills its buffer to ECHO_BUFFER_MAX, then is not read until it drains."""

    def __init__(self, listeners: list[socket.socket]) -> None:
        super().__init__(listeners)
        self.pending: dict[int, bytearray] = {}
        self.peak = 0

    def on_accept(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # round trips, not Nagle
        self.hold(conn, select.EPOLLIN)
        self.pending[conn.fileno()] = bytearray()
        self.peak = max(self.peak, len(self.conns))

    def on_event(self, fd: int, events: int) -> None:
        conn, pending = self.conns[fd], self.pending[fd]
        try:
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                with contextlib.suppress(BlockingIOError):
                    data = conn.recv(CHUNK)
                    if not data:
                        # End of file: one last try at what is owed, then go.
                        with contextlib.suppress(BlockingIOError):
                            conn.send(pending)
                        self.close(fd)
                        return
                    pending += data
            if pending:
                with contextlib.suppress(BlockingIOError):
                    del pending[: conn.send(pending)]
        except OSError:
            self.close(fd)
            return
        mask = select.EPOLLIN if len(pending) < ECHO_BUFFER_MAX else 0
        self.watch(fd, mask | (select.EPOLLOUT if pending else 0))

    def close(self, fd: int) -> None:
        del self.pending[fd]
        self.drop(fd)

    def count(self) -> int:
        return self.peak

    def reset(self) -> None:
        self.peak = len(self.conns)


class _Silent(_Server):
    """Accepts, never sends, never reads; lets a connection go only when its client closes
    (EPOLLRDHUP tells without reading). Counts the connections it holds."""

    def on_accept(self, conn: socket.socket) -> None:
        self.hold(conn, select.EPOLLRDHUP)  # any event (RDHUP, HUP, ERR): the client is gone


class _Sender(_Server):
    """Sends SENDER_DATA without end to each client, as fast as that client takes it, and
    discards what a client sends. It writes only what the kernel accepts now (non-blocking),
    from one shared buffer: a client that never reads costs its socket buffer, no more. Counts
    the bytes sent."""

    def __init__(self, listeners: list[socket.socket]) -> None:
        super().__init__(listeners)
        self.offsets: dict[int, int] = {}
        self.sent = 0
        self.data = memoryview(SENDER_DATA)

    def on_accept(self, conn: socket.socket) -> None:
        self.hold(conn, select.EPOLLIN | select.EPOLLOUT)
        self.offsets[conn.fileno()] = 0

    def on_event(self, fd: int, events: int) -> None:
        conn = self.conns[fd]
        try:
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                with contextlib.suppress(BlockingIOError):
                    if not conn.recv(CHUNK):
                        self.close(fd)
                        return
            if events & select.EPOLLOUT:
                with contextlib.suppress(BlockingIOError):
                    n = conn.send(self.data[self.offsets[fd] :])
                    self.sent += n
                    self.offsets[fd] = (self.offsets[fd] + n) % len(self.data)
        except OSError:
            self.close(fd)

    def close(self, fd: int) -> None:
        del self.offsets[fd]
        self.drop(fd)

    def count(self) -> int:
        return self.sent

    def reset(self) -> None:
        self.sent = 0


class _Listener(_Server):
    """Counts each connection accepted on any of its addresses, then closes it at once."""

    def __init__(self, listeners: list[socket.socket]) -> None:
        super().__init__(listeners)
        self.hits = 0

    def on_accept(self, conn: socket.socket) -> None:
        self.hits += 1
        conn.close()

    def count(self) -> int:
        # Every connection the kernel completed before the question counts, even one whose
        # client closed at once and that the loop has not accepted yet.
        for listener in self.listeners.values():
            self.accept(listener, limit=0)
        return self.hits

    def reset(self) -> None:
        self.count()
        self.hits = 0


SERVER_CLASSES: dict[str, type[_Server]] = {
    "echo": _Echo,
    "silent": _Silent,
    "sender": _Sender,
    "listener": _Listener,
}


def _bind(address: str) -> socket.socket | None:
    """``HOST:PORT`` (port 0: any free port); a trailing ``?`` makes it optional: None when the
    port cannot be had (privileged, or taken)."""
    optional = address.endswith("?")
    host, _, port = address.rstrip("?").rpartition(":")
    try:
        return socket.create_server((host, int(port)), backlog=BACKLOG)
    except OSError as e:
        if optional and e.errno in (errno.EACCES, errno.EADDRINUSE, errno.EPERM):
            return None
        raise OSError(e.errno, f"cannot listen on {address.rstrip('?')}: {e.strerror}") from e


# ---- the tool's side ----------------------------------------------------------------------------


class _Child:
    """One server process and its control line; ``anywhere``: on every CPU the tool was given,
    else on the tool's own (:class:`ServerSet` says which)."""

    def __init__(self, name: str, kind: str, addresses: list[str], *, anywhere: bool) -> None:
        self.name = name
        # Read only when it fails; a file, unlike a pipe, never fills and blocks the server.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by end())
        self._buffer = b""
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tcletd.attack.servers", kind, *addresses],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=Path(__file__).resolve().parents[2],  # where `-m tcletd...` finds this package
            start_new_session=True,  # the terminal's Ctrl-C is the tool's to handle
            preexec_fn=cpus.widen if anywhere else None,
        )
        self.pid = self.process.pid
        assert self.process.stdin is not None and self.process.stdout is not None
        self._control = self.process.stdin
        self._answers = self.process.stdout

    def _readline(self, timeout: float) -> str:
        fd = self._answers.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ServerError(f"the {self.name} server (pid {self.pid}) did not answer")
            data = os.read(fd, 4096)
            if not data:
                raise ServerError(self._gone())
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("ascii", "replace")

    def _gone(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1)
        self._stderr.seek(0)
        err = self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
        status = self.process.returncode
        return f"the {self.name} server (pid {self.pid}) ended (status {status}): {err}"

    def ready(self) -> list[int | None]:
        line = self._readline(READY_TIMEOUT)
        word, *ports = line.split()
        if word != "ready":
            raise ServerError(f"the {self.name} server said {line!r}, not ready")
        return [None if p == "-" else int(p) for p in ports]

    def ask(self, command: str) -> str:
        with self._lock:
            try:
                self._control.write(command.encode() + b"\n")
                self._control.flush()
            except OSError:
                raise ServerError(self._gone()) from None
            answer = self._readline(ANSWER_TIMEOUT)
        if answer.startswith("error"):
            raise ServerError(f"the {self.name} server: {answer}")
        return answer

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._control.close()

    def end(self, deadline: float) -> None:
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()  # by its PID; not yet reaped, so the PID is still this child's
            self.process.wait()
        self._answers.close()
        self._stderr.close()


class ServerSet:
    """Every server an attack run needs, started at ``__enter__`` and ended by PID at
    ``__exit__``. ``low_port``: the privileged port for a counting listener on 127.0.0.1 (None:
    none); it is None after start when that port cannot be bound (not root, or taken)."""

    def __init__(self, *, low_port: int | None = 25) -> None:
        self.echo_port = self.probe_port = self.silent_port = self.sender_port = 0
        self.closed_port = self.listener_port = 0
        self.listener_host = LISTENER_HOST
        self.low_port: int | None = low_port
        self.pids: list[int] = []
        self.probe_pid = 0  # the probe's echo server
        self._children: dict[str, _Child] = {}
        self._closed: socket.socket | None = None

    def __enter__(self) -> ServerSet:
        listener = [f"{LISTENER_HOST}:0"]
        if self.low_port is not None:
            listener.append(f"127.0.0.1:{self.low_port}?")
        # name: (kind, addresses, on every CPU). The probe's echo server is half of each round
        # trip the probe times: it runs where the probe may. The others are the far end of the
        # attacks' traffic, another machine's work in a real deployment: they stay on the
        # tool's CPUs, off the probe's (tcletd.attack.targets.load_with_parent says why).
        plan = {
            "echo": ("echo", ["127.0.0.1:0"], False),
            "probe echo": ("echo", ["127.0.0.1:0"], True),
            "silent": ("silent", ["127.0.0.1:0"], False),
            "sender": ("sender", ["127.0.0.1:0"], False),
            "listener": ("listener", listener, False),
        }
        try:
            # All start at once, then each is waited for: start-up costs one Python start.
            for name, (kind, addresses, anywhere) in plan.items():
                self._children[name] = _Child(name, kind, addresses, anywhere=anywhere)
                self.pids.append(self._children[name].pid)
            ports = {name: child.ready() for name, child in self._children.items()}
            self._closed = self._closed_socket()
        except BaseException:
            self._end()
            raise
        self.echo_port, self.probe_port = ports["echo"][0] or 0, ports["probe echo"][0] or 0
        self.probe_pid = self._children["probe echo"].pid
        self.silent_port, self.sender_port = ports["silent"][0] or 0, ports["sender"][0] or 0
        self.listener_port = ports["listener"][0] or 0
        self.low_port = ports["listener"][1] if self.low_port is not None else None
        self.closed_port = self._closed.getsockname()[1]
        return self

    @staticmethod
    def _closed_socket() -> socket.socket:
        # Bound and never listening: the kernel answers a connect with a reset (refused), and
        # since the port stays bound for the whole run it cannot be handed to anyone else (a
        # port bound and closed again could be, though that is unlikely within a run).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        return sock

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end()

    def _end(self) -> None:
        if self._closed is not None:
            self._closed.close()
        for child in self._children.values():
            child.close_stdin()  # each ends by itself at end of file
        deadline = time.monotonic() + EXIT_GRACE
        for child in self._children.values():
            child.end(deadline)

    def listener_hits(self) -> int:
        """Connections accepted so far (since ``reset_hits``) by listener_port and low_port."""
        return int(self._children["listener"].ask("count"))

    def reset_hits(self) -> None:
        self._children["listener"].ask("reset")

    def peak_connections(self) -> int:
        """The most connections the attackers' echo server held at once since ``reset_peak``."""
        return int(self._children["echo"].ask("count"))

    def reset_peak(self) -> None:
        self._children["echo"].ask("reset")

    def silent_connections(self) -> int:
        """The connections the silent server holds now."""
        return int(self._children["silent"].ask("count"))

    def sent_bytes(self) -> int:
        """Bytes the sender server has sent to all its clients so far."""
        return int(self._children["sender"].ask("count"))


def main(argv: list[str]) -> int:
    """The child's whole life: bind, say ``ready``, serve until stdin ends."""
    if len(argv) < 2 or argv[0] not in SERVER_CLASSES:
        usage = f"usage: python -m tcletd.attack.servers {'|'.join(SERVER_CLASSES)} HOST:PORT[?]..."
        print(usage, file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the tool decides when its servers end
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of connections
    bound = [_bind(a) for a in argv[1:]]
    ports = [str(s.getsockname()[1]) if s else "-" for s in bound]
    os.write(1, ("ready " + " ".join(ports) + "\n").encode())
    SERVER_CLASSES[argv[0]]([s for s in bound if s]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
