"""The resident host audits what its bounded control endpoint does to clients (``control``
records: evicted, refused, deadline, held_bytes), and a flood of such events cannot flood the
audit log. A real ``tcletd serve`` over its real Unix socket, its real audit file."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest
from support.audit import Record, audit_records
from support.waiting import wait_until
from support.wire import connect, exchange, frames_from, serving, status, tiny_run

from tcletd.shared.control import encode

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
ME = {"pid": os.getpid(), "uid": os.getuid()}


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def _control(audit: Path, action: str) -> list[Record]:
    if not audit.exists():
        return []
    return [r for r in audit_records(audit, "control") if r["action"] == action]


def _counted(audit: Path) -> int:
    """Evictions the log accounts for: records, and the counts in summaries."""
    return sum(int(r.get("suppressed", 1)) for r in _control(audit, "evicted"))


def _told(conn: socket.socket) -> str:
    conn.settimeout(10)
    got = frames_from(conn, until="error")
    return str(got[-1]["message"]) if got else ""


def test_an_eviction_is_audited_with_the_evicted_client(sock: Path, audit: Path) -> None:
    evicted = "evicted: idle while the host was full"
    with serving(sock, "--max-connections", "2", "--audit", str(audit)), connect(sock) as first:
        wait_until(lambda: status(sock) == [])  # the first is made before the others
        with connect(sock), connect(sock):
            assert _told(first) == evicted
            wait_until(lambda: _control(audit, "evicted"))
            # Two when the host took the new connections before the status one's end of file
            # (it then still held two): each is a record of its own, naming its client.
            records = _control(audit, "evicted")
            assert 1 <= len(records) <= 2, records
            for record in records:
                assert record["client"] == ME and record["detail"] == evicted
                assert "tclet" not in record and "suppressed" not in record


def test_a_refusal_is_audited(sock: Path, audit: Path) -> None:
    with serving(sock, "--max-connections", "1", "--audit", str(audit)), connect(sock) as run:
        run.sendall(encode({"op": "run"}, b"puts go; flush stdout; after 30000"))
        assert frames_from(run, until="stdout")[-1]["event"] == "stdout"
        got = exchange(sock, encode({"op": "status"}), until="status")
        message = "refused: the host serves 1 connections at most, each running a tclet; try "
        assert str(got[-1]["message"]).startswith(message), got
        wait_until(lambda: _control(audit, "refused"))
        [record] = _control(audit, "refused")
        assert record["client"] == ME and record["detail"] == got[-1]["message"]


def test_frame_and_idle_deadlines_are_audited(sock: Path, audit: Path) -> None:
    args = ("--idle-deadline", "1s", "--frame-deadline", "1s", "--audit", str(audit))
    with serving(sock, *args), connect(sock) as idle, connect(sock) as half:
        half.sendall(b'{"op":"sta')
        assert _told(idle) == "idle: no request in 1 s"
        assert _told(half) == "frame not complete 1 s after its first byte"
        wait_until(lambda: len(_control(audit, "deadline")) == 2)
        records = _control(audit, "deadline")
        assert {r["detail"] for r in records} == {
            "idle: no request in 1 s",
            "frame not complete 1 s after its first byte",
        }
        assert all(r["client"] == ME for r in records)


def test_a_held_bytes_refusal_is_audited(sock: Path, audit: Path) -> None:
    """Nine connections each half-send 8 MiB: the ninth would take the host past 64 MiB."""
    with serving(sock, "--audit", str(audit)):
        conns = []
        try:
            for _ in range(9):
                conn = connect(sock)
                conn.sendall(b'{"op":"run","size":%d}\n' % (16 * MIB))
                with contextlib.suppress(OSError):  # refused midway: the host hung up
                    conn.sendall(b"x" * (8 * MIB))
                conns.append(conn)
            wait_until(lambda: _control(audit, "held_bytes"), timeout=20)
            record = _control(audit, "held_bytes")[0]
            assert record["client"] == ME
            assert record["detail"] == (
                "the host holds 67108864 bytes of incomplete frames, its most; this frame "
                "would take it past that"
            )
        finally:
            for conn in conns:
                conn.close()
        tiny_run(sock)


def test_a_flood_of_idle_connections_writes_a_bounded_number_of_records(
    sock: Path, audit: Path
) -> None:
    """2,000 idle connections against a cap of 16: over a thousand evictions, at most 10
    records a second of them plus one summary a second carrying the count of the rest."""
    with serving(sock, "--max-connections", "16", "--audit", str(audit)):
        began = time.monotonic()
        window: list[socket.socket] = []
        try:
            for _ in range(2000):
                conn = connect(sock)
                # Its greeting read: the host has taken it (a connection the client closes
                # before the host takes it fails the greeting and is no eviction).
                assert conn.recv(4096).startswith(b'{"event":"hello"')
                window.append(conn)
                if len(window) > 64:  # evicted long since: the test's descriptors stay few
                    window.pop(0).close()
            assert status(sock) == []
            # Not every one of the 2,000 is evicted: under load the test may close a connection
            # the host has not accepted yet. A thousand evictions make the flood.
            wait_until(lambda: _counted(audit) >= 1000, timeout=30, message="evictions not counted")
            elapsed = time.monotonic() - began
        finally:
            for conn in window:
                conn.close()
        records = _control(audit, "evicted")
        summaries = [r for r in records if "suppressed" in r]
        print(f"{len(records)} records ({len(summaries)} summaries) in {elapsed:.1f} s")
        assert summaries and all(r["client"] is None for r in summaries)
        assert len(records) <= 11 * (int(elapsed) + 2), (len(records), elapsed)
        assert len(records) < 200
