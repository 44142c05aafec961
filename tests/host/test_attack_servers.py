"""The attack tool's local servers (``tcletd.attack.servers``) and its DNS server, with real
server processes and real sockets on 127.0.0.0/8."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from dnslib import QTYPE, RCODE, DNSRecord  # type: ignore[import-untyped]

from tcletd.attack.dnsserver import DnsServer
from tcletd.attack.machine import rss
from tcletd.attack.servers import SENDER_DATA, ServerError, ServerSet

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def servers() -> Iterator[ServerSet]:
    with ServerSet() as started:
        yield started


def _until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_listener_counts_every_connect_even_one_closed_at_once(servers: ServerSet) -> None:
    assert servers.listener_host == "127.0.0.3"
    with pytest.raises(ConnectionRefusedError):  # it listens on 127.0.0.3 only
        socket.create_connection(("127.0.0.1", servers.listener_port), timeout=5)
    held = [socket.create_connection((servers.listener_host, servers.listener_port))]
    for _ in range(3):
        socket.create_connection((servers.listener_host, servers.listener_port)).close()
    reset = socket.create_connection((servers.listener_host, servers.listener_port))
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()  # a reset before the server could have accepted it
    assert servers.listener_hits() == 5  # asked at once: no waiting for the server's loop
    if servers.low_port is not None:
        socket.create_connection(("127.0.0.1", servers.low_port)).close()
        assert servers.listener_hits() == 6
    servers.reset_hits()
    assert servers.listener_hits() == 0
    held[0].close()


def test_listener_counts_what_waits_in_its_backlog_when_asked(servers: ServerSet) -> None:
    """Connections the kernel completed while the server was not running count at once."""
    listener = servers.pids[-1]
    os.kill(listener, signal.SIGSTOP)
    try:
        for _ in range(150):  # more than its loop accepts in one go
            socket.create_connection((servers.listener_host, servers.listener_port)).close()
    finally:
        os.kill(listener, signal.SIGCONT)
    assert servers.listener_hits() == 150


def test_low_port_is_none_when_it_cannot_be_bound() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with ServerSet(low_port=port) as servers:
            assert servers.low_port is None
            socket.create_connection((servers.listener_host, servers.listener_port)).close()
            assert servers.listener_hits() == 1
    with ServerSet(low_port=None) as servers:
        assert servers.low_port is None


def test_low_port_counts_when_it_can_be_bound() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free = probe.getsockname()[1]
    # An ephemeral port stands in for 25 (which needs root): the same path binds it.
    with ServerSet(low_port=free) as servers:
        assert servers.low_port == free
        socket.create_connection(("127.0.0.1", free)).close()
        assert servers.listener_hits() == 1


def test_echo_echoes_and_counts_its_peak(servers: ServerSet) -> None:
    conns = [socket.create_connection(("127.0.0.1", servers.echo_port)) for _ in range(20)]
    for i, conn in enumerate(conns):
        conn.sendall(f"hello {i}\n".encode())
    for i, conn in enumerate(conns):
        conn.settimeout(5)
        assert conn.recv(100) == f"hello {i}\n".encode()
    assert servers.peak_connections() == 20
    for conn in conns:
        conn.close()

    def reset_to_zero() -> bool:
        servers.reset_peak()
        return servers.peak_connections() == 0

    assert _until(reset_to_zero)


def test_echo_keeps_every_byte_for_a_client_that_reads_slowly(servers: ServerSet) -> None:
    """A small receive window makes its sends partial and fills its per-connection buffer: it
    must pause reading that client, then go on, losing and reordering nothing."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    conn.connect(("127.0.0.1", servers.echo_port))
    # More than the kernel's largest send buffer (4 MiB) and its own per-connection buffer.
    big = os.urandom(16 << 20)
    before = rss(servers.pids[0])
    writer = threading.Thread(target=conn.sendall, args=(big,), daemon=True)
    writer.start()
    time.sleep(1)  # let it fill up before reading anything
    assert rss(servers.pids[0]) - before < 4 << 20  # it stopped reading: bounded memory
    got = bytearray()
    conn.settimeout(10)
    try:
        while len(got) < len(big):
            got += conn.recv(1 << 16)
        writer.join(10)
        assert bytes(got) == big
    finally:
        conn.close()


def test_echo_holds_a_thousand_connections_and_the_probe_is_apart(servers: ServerSet) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    conns: list[socket.socket] = []
    try:
        for _ in range(1000):
            conns.append(socket.create_connection(("127.0.0.1", servers.echo_port)))
        assert _until(lambda: servers.peak_connections() == 1000)
        with socket.create_connection(("127.0.0.1", servers.probe_port), timeout=5) as probe:
            probe.sendall(b"ping")
            assert probe.recv(10) == b"ping"
        assert servers.peak_connections() == 1000  # the probe's echo server is another one
        conns[-1].sendall(b"last")
        conns[-1].settimeout(5)
        assert conns[-1].recv(10) == b"last"
    finally:
        for conn in conns:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_sender_serves_readers_while_one_never_reads(servers: ServerSet) -> None:
    stalled = socket.socket()  # never reads, with a small window: a blocking sender would hang
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", servers.sender_port))
    readers = [socket.create_connection(("127.0.0.1", servers.sender_port)) for _ in range(2)]
    got = {r.fileno(): bytearray() for r in readers}
    deadline = time.monotonic() + 20
    # More than the kernel's largest send buffer (4 MiB) can hold for the stalled client.
    while min(len(b) for b in got.values()) <= 8 << 20 and time.monotonic() < deadline:
        for ready in select.select(readers, [], [], 1)[0]:
            got[ready.fileno()] += ready.recv(1 << 16)
    for data in got.values():
        assert len(data) > 8 << 20
        assert data[: len(SENDER_DATA)] == SENDER_DATA[: len(data)]
        assert data.count(b"\n") == len(data) // 64  # whole 64-byte lines, in order
    assert servers.sent_bytes() >= sum(len(b) for b in got.values())
    for conn in (stalled, *readers):
        conn.close()


def test_silent_server_holds_and_never_sends(servers: ServerSet) -> None:
    conn = socket.create_connection(("127.0.0.1", servers.silent_port))
    conn.sendall(b"anyone there?\n")
    conn.settimeout(0.3)
    with pytest.raises(TimeoutError):
        conn.recv(10)
    assert _until(lambda: servers.silent_connections() == 1)
    conn.close()
    assert _until(lambda: servers.silent_connections() == 0)  # it lets go of a closed client


def test_closed_port_refuses(servers: ServerSet) -> None:
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", servers.closed_port), timeout=5)


def test_every_server_is_gone_after_exit_even_one_that_does_not_listen() -> None:
    pids: list[int] = []
    try:
        with pytest.raises(RuntimeError, match="leaving"), ServerSet() as servers:
            pids = list(servers.pids)
            assert len(pids) == 5 and all(_alive(p) for p in pids)
            os.kill(pids[0], signal.SIGSTOP)  # it cannot see its stdin close: it must be killed
            raise RuntimeError("leaving")
        assert not any(_alive(p) for p in pids)
    finally:
        for pid in pids:  # had ServerSet failed to end one, the test ends it
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_servers_end_when_the_tool_is_killed() -> None:
    """A tool killed with SIGKILL cannot end its servers: each ends when its stdin closes."""
    code = (
        "import time\n"
        "from tcletd.attack.servers import ServerSet\n"
        "servers = ServerSet(low_port=None).__enter__()\n"
        "print(*servers.pids, flush=True)\n"
        "time.sleep(60)\n"
    )
    tool = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert tool.stdout is not None
        pids = [int(p) for p in tool.stdout.readline().split()]
        assert len(pids) == 5 and all(_alive(p) for p in pids)
        tool.kill()
        tool.wait()
        assert _until(lambda: not any(_alive(p) for p in pids))
    finally:
        tool.kill()
        tool.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_dead_server_is_a_clear_error(servers: ServerSet) -> None:
    pid = servers.pids[-1]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ServerError, match=rf"the listener server \(pid {pid}\) ended"):
        servers.listener_hits()


# ---- the DNS server -------------------------------------------------------------------------


def _ask(server: DnsServer, name: str, qtype: str = "A", timeout: float = 5) -> DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(DNSRecord.question(name, qtype).pack(), ("127.0.0.1", server.port))
        return DNSRecord.parse(sock.recv(4096))


def test_dns_wildcards_delays_and_queries_under() -> None:
    records = {"*.fast.attack.test": ["127.0.0.1"], "*.slow.attack.test": ["127.0.0.1"]}
    with DnsServer(records, delays={"slow.attack.test": 1.0}) as server:
        answer = _ask(server, "n1.fast.attack.test")
        assert [str(rr.rdata) for rr in answer.rr] == ["127.0.0.1"]
        assert _ask(server, "fast.attack.test").header.rcode == RCODE.NXDOMAIN
        assert _ask(server, "n1.fast.attack.test", "AAAA").rr == []
        started = time.monotonic()
        assert str(_ask(server, "a.b.slow.attack.test").rr[0].rdata) == "127.0.0.1"
        assert time.monotonic() - started >= 0.9
        _ask(server, "x.leak.attack.test")
        assert server.queries_under("leak.attack.test") == ["x.leak.attack.test"]
        assert server.queries_under("attack.test") == [
            "n1.fast.attack.test",
            "fast.attack.test",
            "n1.fast.attack.test",
            "a.b.slow.attack.test",
            "x.leak.attack.test",
        ]
        assert ("n1.fast.attack.test", QTYPE[QTYPE.AAAA]) in server.queries
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00garbage", ("127.0.0.1", server.port))  # dropped, not logged
        _ask(server, "after.leak.attack.test")
        assert server.queries_under("leak.attack.test")[-1] == "after.leak.attack.test"
        assert len(server.queries) == 6
