"""``tcletd.attack.machine``: load during a phase and per-process figures, read from /proc with
real child processes (short-lived Pythons, ended by PID)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tcletd.attack.machine import (
    BUSY_OTHERS_MAX,
    STEAL_MAX,
    Load,
    LoadMeter,
    descendants,
    fd_count,
    rss,
    tcp_inodes,
    tcp_sockets,
)

pytestmark = pytest.mark.timeout(60)

# Spins for the given CPU seconds, then says so and waits (alive) for stdin to end.
BUSY = (
    "import sys, time\n"
    "end = time.process_time() + float(sys.argv[1])\n"
    "while time.process_time() < end: pass\n"
    "print('done', flush=True)\n"
    "sys.stdin.read()\n"
)
# Starts a child of its own that sleeps, prints its PID, waits for stdin to end.
PARENT = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
    " stdin=subprocess.PIPE)\n"
    "print(child.pid, flush=True)\n"
    "sys.stdin.read()\n"
    "child.stdin.close(); child.wait()\n"
)


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _python(started: list[subprocess.Popen[str]], code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(proc)
    return proc


def test_a_busy_process_is_others_unless_it_descends_from_ours(
    spawn: list[subprocess.Popen[str]],
) -> None:
    """Two meters over the same phase: one counts the test process (and so its busy child) as
    ours, the other counts nothing as ours; the child's CPU is exactly what tells them apart."""
    ours = LoadMeter(lambda: [os.getpid()])
    nobody = LoadMeter(list)
    started = time.monotonic()
    ours.start()
    nobody.start()
    busy = _python(spawn, BUSY, "1.0")
    assert busy.stdout is not None and busy.stdout.readline() == "done\n"
    mine, others = ours.stop(), nobody.stop()
    elapsed = time.monotonic() - started
    child_cores = 1.0 / elapsed  # it spent 1.0 s of CPU over the phase
    assert child_cores > 0.5, f"the machine is too loaded to tell ({elapsed:.2f} s for 1 s)"
    assert others.busy_others > 0.5, others
    assert others.busy_others - mine.busy_others == pytest.approx(child_cores, abs=0.15)
    assert mine.busy_total == pytest.approx(others.busy_total, abs=0.1)
    assert 0 <= mine.steal <= 1 and mine.seconds == pytest.approx(elapsed, abs=0.1)


def test_a_busy_process_named_as_ours_is_not_others(spawn: list[subprocess.Popen[str]]) -> None:
    busy = _python(spawn, BUSY, "0.6")
    named = LoadMeter(lambda: [busy.pid])
    nobody = LoadMeter(list)
    everyone = LoadMeter(lambda: [1, 2])  # init and kthreadd: every process descends from them
    for meter in (named, nobody, everyone):
        meter.start()
    assert busy.stdout is not None and busy.stdout.readline() == "done\n"
    mine, others, all_ours = named.stop(), nobody.stop(), everyone.stop()
    assert others.busy_others - mine.busy_others > 0.3, (mine, others)
    # The machine's busy time and the processes' own times agree: with every process ours,
    # others are left with next to nothing (interrupts, and processes that ended meanwhile).
    assert all_ours.busy_total > 0.3 and all_ours.busy_others < 0.3, all_ours


def test_stop_without_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without start"):
        LoadMeter(list).stop()


def test_why_noisy_names_each_threshold() -> None:
    assert Load(busy_others=BUSY_OTHERS_MAX, steal=STEAL_MAX, busy_total=1.0).why_noisy() == ""
    noisy = Load(busy_others=0.9, steal=0.2, busy_total=1.5).why_noisy()
    assert "0.90 cores" in noisy and "stole 20.0%" in noisy


def test_descendants_fds_and_rss_and_a_gone_process(spawn: list[subprocess.Popen[str]]) -> None:
    parent = _python(spawn, PARENT)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert descendants(parent.pid) == [child]
    assert child in descendants(os.getpid())
    assert fd_count(parent.pid) >= 3
    assert 1 << 20 < rss(parent.pid) < 1 << 30
    assert parent.stdin is not None
    parent.stdin.close()
    parent.wait(10)
    assert descendants(parent.pid) == [] and fd_count(parent.pid) == 0 and rss(parent.pid) == 0
    assert descendants(child) == [] and fd_count(child) == 0 and rss(child) == 0


def test_a_processs_tcp_sockets_are_counted_from_its_descriptors() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        before = tcp_sockets(os.getpid(), tcp_inodes())
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        other = socket.socketpair()  # not TCP: not counted
        try:
            # The listener was there before; the two ends of the connection are new.
            assert tcp_sockets(os.getpid(), tcp_inodes()) == before + 2
        finally:
            for sock in (client, accepted, *other):
                sock.close()
        assert tcp_sockets(os.getpid(), tcp_inodes()) == before
    assert tcp_sockets(2**22 + 1, tcp_inodes()) == 0  # no such process
