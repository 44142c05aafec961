"""A resident host (``tcletd serve``) driven over its raw control wire, for the tests of its
bounds and for fuzzing it: the process (its own session, optional descriptor limit, killed by
PID), raw frames in and out, and the host process's resident memory."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

from support import ROOT
from tcletd.shared.control import FrameReader, encode
from tcletd.shared.control import hello as hello_frame

Frame = dict[str, object]


class Serving:
    """A running ``tcletd serve``: its process and what it wrote to stderr (read all along, so
    that a host that logs much never blocks on a full pipe)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._lines: list[str] = []
        assert proc.stderr is not None
        self._stream = proc.stderr
        self._reader = threading.Thread(target=self._read, name="serve-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stream:
            self._lines.append(line.decode("utf-8", "backslashreplace"))

    def stderr(self) -> str:
        return "".join(self._lines)


@contextlib.contextmanager
def serving(sock: Path, *args: str, nofile: int | None = None) -> Iterator[Serving]:
    """``tcletd serve --socket SOCK ARGS`` until it serves; ``nofile``: its RLIMIT_NOFILE. Its
    session (the host, its zygote, its workers) is killed by the group's id afterwards."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(
        [sys.executable, "-m", "tcletd", "serve", "--socket", str(sock), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=limit,  # only setrlimit, before exec
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert line.startswith("tcletd: serving on "), line
        yield Serving(proc)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def connect(sock: Path, timeout: float = 10.0, *, hello: bool = True) -> socket.socket:
    """A connection to the host, our hello sent (unless ``hello`` is false); a full backlog is
    EAGAIN on a Unix socket with a timeout set (blocking clients wait instead), so try again
    until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        try:
            conn.connect(str(sock))
            if hello:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    conn.sendall(hello_frame())  # a refused client reads why with its frames
            return conn
        except BlockingIOError:
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def frames_from(
    conn: socket.socket, until: str = "", limit: int = 1 << 24, *, greeting: bool = True
) -> list[Frame]:
    """The host's frames on ``conn`` until it hangs up, or up to one whose event is ``until``
    (or an error); a payload is kept under the frame's ``payload`` key; the host's greeting is
    left out unless ``greeting`` is false."""
    got: list[Frame] = []
    reader = FrameReader(limit)
    with contextlib.suppress(ConnectionResetError):
        while data := conn.recv(1 << 16):
            for header, payload in reader.feed(data):
                if header.get("event") == "hello" and greeting:
                    continue  # the host's greeting, before any answer
                got.append({**header, "payload": payload} if payload else header)
                if header.get("event") in (until, "error"):
                    return got
    return got


def exchange(sock: Path, *frames: bytes, until: str, timeout: float = 10.0) -> list[Frame]:
    """Send ``frames`` on a new connection; the host's answer up to ``until``."""
    with connect(sock, timeout) as conn:
        try:
            for frame in frames:
                conn.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the host may refuse (error frame, then close) before our frames are in
        return frames_from(conn, until)


def status(sock: Path, timeout: float = 10.0) -> list[Frame]:
    """``tcletd status``'s question, raw: one entry per running tclet."""
    tclets: list[Frame] = []
    with connect(sock, timeout) as conn:
        conn.sendall(encode({"op": "status"}))
        reader = FrameReader(0)
        while data := conn.recv(1 << 16):
            for header, _ in reader.feed(data):
                if header.get("event") == "hello":
                    continue
                assert header.get("event") == "status", header
                rows = header["tclets"]
                assert isinstance(rows, list)
                tclets += rows
                if header.get("more") is not True:  # a long listing: several frames
                    return tclets
    raise AssertionError("the host hung up before its status listing ended")


def tiny_run(sock: Path, timeout: float = 20.0) -> None:
    """A tclet that prints one line runs to its end on the host."""
    got = exchange(sock, encode({"op": "run"}, b"puts ok"), until="exit", timeout=timeout)
    assert [f["event"] for f in got] == ["started", "stdout", "exit"], got
    assert got[1]["payload"] == b"ok\n" and got[2]["status"] == 0, got


def rss(pid: int) -> int:
    """The host process's resident memory, in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


def run_frame(**fields: object) -> bytes:
    return encode({"op": "run", **fields}, b"puts ok")


__all__: Sequence[str] = [
    "Serving",
    "connect",
    "exchange",
    "frames_from",
    "rss",
    "run_frame",
    "serving",
    "status",
    "tiny_run",
]
