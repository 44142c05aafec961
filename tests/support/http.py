"""A web server on 127.0.0.1 in a thread, for tclets fetched from URLs: files, redirects, large
bodies, error statuses, a server that never answers; over plain HTTP or HTTPS with a
self-signed certificate made for the test (``openssl req -x509``)."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Route:
    """What a path answers: a status, headers and a body; ``silent``: nothing, ever (the
    connection stays open until the server closes); ``chunks``: the body without a length,
    written in pieces as an HTTP/1.0 answer closed at its end; ``drip``: the body a byte at a
    time, this many seconds apart (a server too slow to finish)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    silent: bool = False
    no_length: bool = False
    drip: float = 0.0  # seconds between the body's bytes, written one at a time


class WebServer:
    """``with WebServer() as web``: ``web.file(path, body)``, ``web.redirect(path, to)``,
    ``web.url(path)``; ``web.requests`` lists the paths asked for, in order, and
    ``web.most_in_flight`` is the most requests it answered at once."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.in_flight = 0  # requests being answered now, and the most at once so far
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                with server._lock:
                    server.requests.append(self.path)
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                self._counted = True
                try:
                    self._answer()
                finally:
                    self._done()

            def _done(self) -> None:
                """No longer in flight: called before the last byte goes, so that a client that
                has it all (and starts another request) never finds it still counted."""
                if self._counted:
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self) -> None:
                route = server.routes.get(self.path.partition("?")[0], Route(404, b"not here\n"))
                if route.silent:
                    server._closing.wait(60)
                    return
                if route.no_length:
                    self.protocol_version = "HTTP/1.0"
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if not route.no_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                step = 1 if route.drip else 1 << 16
                with contextlib.suppress(OSError):  # a client that stops reading at its limit
                    for start in range(0, len(route.body), step):
                        if start and route.drip and server._closing.wait(route.drip):
                            break
                        if start + step >= len(route.body):
                            self._done()
                        self.wfile.write(route.body[start : start + step])
                        self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> WebServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def file(self, path: str, body: str | bytes, **route: object) -> str:
        """Serve ``body`` at ``path``; its URL."""
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = Route(body=data, **route)  # type: ignore[arg-type]
        return self.url(path)

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        """``path`` redirects to ``to`` (a URL or a path); its URL."""
        self.routes[path] = Route(status, headers={"Location": to})
        return self.url(path)

    def silent(self, path: str) -> str:
        self.routes[path] = Route(silent=True)
        return self.url(path)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made now: the certificate is its own CA (point
    ``SSL_CERT_FILE`` at it to trust it)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def web_server(tls: tuple[Path, Path] | None = None) -> Iterator[WebServer]:
    with WebServer(tls) as server:
        yield server
