"""Loopback servers for the tests: echo, sink, source, silent, HTTP, and refused ports.

Every server listens on 127.0.0.1 port 0 (the kernel picks a free port) and runs in daemon
threads, so a test that forgets to stop one cannot hang the interpreter at exit. The servers
are deliberately dumb and deterministic: the Tcl scripts print what they receive, and any
nondeterminism here would show up as a false difference between tclsh and tcletd.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence

HOST = "127.0.0.1"

Handler = Callable[[socket.socket], None]


class TcpServer:
    """A thread-per-connection TCP server; ``handler`` owns the connection until it returns."""

    def __init__(self, handler: Handler, name: str = "tcp") -> None:
        self._handler = handler
        self._name = name
        self._listener = socket.create_server((HOST, 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"{name}-accept", daemon=True
        )

    def start(self) -> TcpServer:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            with self._lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name=f"{self._name}-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handler(conn)
        except OSError:
            pass  # the client went away mid-conversation; not the server's business
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        # shutdown() wakes a thread blocked in accept(); close() alone does not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def echo_handler(conn: socket.socket) -> None:
    """Echo every byte back until EOF, then close (so the client also sees EOF)."""
    while data := conn.recv(65536):
        conn.sendall(data)


def silent_handler(conn: socket.socket) -> None:
    """Say nothing; read until the client goes away."""
    while conn.recv(65536):
        pass


def sink_handler(conn: socket.socket) -> None:
    """Read until the client half-closes, then answer ``<count> <crc32>`` and close.

    The reply after EOF is what makes this the half-close peer: a client that closed its
    whole socket instead of its write side would never read the answer.
    """
    count = 0
    crc = 0
    while data := conn.recv(65536):
        count += len(data)
        crc = zlib.crc32(data, crc)
    conn.sendall(f"{count} {crc}\n".encode())


def pattern(n: int) -> bytes:
    """``n`` bytes cycling through every value 0..255, the corpus's binary test pattern."""
    block = bytes(range(256))
    reps, rest = divmod(n, 256)
    return block * reps + block[:rest]


def source_handler(conn: socket.socket) -> None:
    """Read one decimal line ``N``, send N pattern bytes, then close."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            return
        line += chunk
    n = int(line.strip())
    data = pattern(n)
    view = memoryview(data)
    for off in range(0, n, 65536):
        conn.sendall(view[off : off + 65536])
    # Half-close rather than close: a close with unread input in our buffer could turn into
    # a RST and make the client lose the tail of the data.
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    """Fixed responses; no Date-dependent body, so the scripts can print bodies verbatim."""

    protocol_version = "HTTP/1.1"
    server_version = "netutil/1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean

    def _reply(
        self, code: int, ctype: str, body: bytes, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/hello":
            self._reply(200, "text/plain", b"hello from the test server\n", {"X-Test": "yes"})
        elif self.path == "/big":
            self._reply(200, "application/octet-stream", pattern(100_000))
        elif self.path == "/chunked":
            # Written by hand: http.server has no chunked encoder, and Tcl's http package
            # takes a different read path for chunked bodies, which is worth exercising.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first chunk\n", b"second\n", b"x" * 5000 + b"\n"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/redirect":
            self._reply(302, "text/plain", b"moved\n", {"Location": "/hello"})
        else:
            self._reply(404, "text/plain", b"not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        self._reply(200, "text/plain", f"got {len(body)} bytes of {ctype}: ".encode() + body)


class HttpServer:
    """``http.server`` in a thread, on 127.0.0.1 port 0."""

    def __init__(self) -> None:
        self._server = http.server.ThreadingHTTPServer((HOST, 0), _HttpHandler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> HttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections, reserved for the duration of the block.

    A socket that is bound but not listening answers a SYN with RST (ECONNREFUSED), and
    holding it bound means no other test can start listening there meanwhile, unlike the
    "bind, read the port, close" trick.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, 0))
        yield s.getsockname()[1]
    finally:
        s.close()


# Names a script may list on its "# needs:" line, in the order it wants their ports in argv.
SERVER_KINDS = ("echo", "sink", "source", "http", "refused")


@contextlib.contextmanager
def servers_for(needs: Sequence[str]) -> Iterator[list[str]]:
    """Start the servers a script needs; yield its argv: ``127.0.0.1`` then one port each."""
    handlers: dict[str, Handler] = {
        "echo": echo_handler,
        "sink": sink_handler,
        "source": source_handler,
    }
    with contextlib.ExitStack() as stack:
        argv = [HOST]
        for kind in needs:
            if kind in handlers:
                port = stack.enter_context(TcpServer(handlers[kind], kind)).port
            elif kind == "http":
                port = stack.enter_context(HttpServer()).port
            elif kind == "refused":
                port = stack.enter_context(refused_port())
            else:
                raise ValueError(f"unknown server kind {kind!r} (known: {SERVER_KINDS})")
            argv.append(str(port))
        yield argv
