"""The shipped example tclets work as examples/README.md says, under the policies it names."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator

import pytest
from support import EXAMPLES
from support.net import HttpServer
from support.processes import run_tcletd, tcletd_process

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def _server(example: str, *argv: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """An example server under ``--policy trusted`` and the port it printed first."""
    args = ["run", "--policy", "trusted", str(EXAMPLES / example), "--", *argv]
    with tcletd_process(args) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        match = re.search(r"port (\d+)", first)
        assert match is not None, f"no port in {first!r}"
        yield proc, int(match.group(1))


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, _err = proc.communicate(timeout=20)
    return proc.returncode, out.decode()


def test_echo_server_and_client() -> None:
    with _server("echo_server.tcl", "0", "1") as (server, port):
        client = run_tcletd(
            [
                "run",
                "--origin",
                "http://127.0.0.1/",
                str(EXAMPLES / "echo_client.tcl"),
                "--",
                "127.0.0.1",
                str(port),
                "my own line",
            ]
        )
        assert client.status == 0, client.stderr
        assert "got:  my own line" in client.stdout
        status, out = _finish(server)
    assert status == 0
    assert "client from 127.0.0.1" in out


def test_echo_client_from_another_origin_is_refused() -> None:
    client = run_tcletd(
        [
            "run",
            "--origin",
            "http://example.com/",
            str(EXAMPLES / "echo_client.tcl"),
            "--",
            "127.0.0.1",
            "7777",
        ]
    )
    assert client.status != 0
    assert "permission denied for host 127.0.0.1 port 7777" in client.stderr


def test_hi_and_bye_serves_clients_then_exits() -> None:
    with _server("hi_and_bye.tcl", "0", "2") as (server, port):
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                data = b""
                while chunk := conn.recv(100):
                    data += chunk
            assert data.replace(b"\r\n", b"\n") == b"Hi\nBye!\n"
        status, out = _finish(server)
    assert status == 0
    assert "said hi and bye to client 2 of 2" in out


def test_http_get_under_home() -> None:
    with HttpServer() as http:
        url = f"http://127.0.0.1:{http.port}/hello"
        ran = run_tcletd(
            [
                "run",
                "--origin",
                f"http://127.0.0.1:{http.port}/app.tcl",
                str(EXAMPLES / "http_get.tcl"),
                "--",
                url,
            ]
        )
    assert ran.status == 0, ran.stderr
    assert "200" in ran.stdout
