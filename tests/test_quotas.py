"""Quotas as a tclet meets them: sockets, connects per second, bytes, pacing, output, host totals.

Real ``tcletd run`` processes (or an in-process Host), real loopback servers; each test fails if
its mechanism is broken (no quota, wrong text, a slot not freed, bytes not counted).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from tcletd.api import Host, HostFull
from tcletd.host.quotas import (
    REFUSAL_PAUSE,
    REFUSALS_PER_SECOND,
    SO_MAX_PACING_RATE,
    HostTotals,
    TcletQuotas,
    tcp_bytes,
)
from tcletd.policy.quantities import Quotas, format_duration, format_size
from tests.conftest import audit_records
from tests.netutil import TcpServer, echo_handler

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def echo() -> Iterator[TcpServer]:
    with TcpServer(echo_handler) as server:
        yield server


def test_formatters() -> None:
    assert format_size(64 * 2**20) == "64 MiB"
    assert format_size(2**20) == "1 MiB"
    assert format_size(512 * 1024) == "512 KiB"
    assert format_size(100) == "100 B"
    assert format_duration(10.0) == "10 s"
    assert format_duration(0.25) == "0.25 s"


def test_socket_quota_error_and_close_frees_a_slot(tclet, echo: TcpServer, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    script = f"""
set socks [list [socket -server {{apply {{{{c a p}} {{close $c}}}}}} -myaddr 127.0.0.1 0]]
for {{set i 1}} {{$i < 8}} {{incr i}} {{lappend socks [socket 127.0.0.1 {echo.port}]}}
puts [catch {{socket 127.0.0.1 {echo.port}}} m opts]; puts $m; puts [dict get $opts -errorcode]
puts [catch {{socket -server foo -myaddr 127.0.0.1 0}} m]; puts $m
close [lindex $socks 3]
set s [socket 127.0.0.1 {echo.port}]
puts $s hello; flush $s; puts [gets $s]
close [lindex $socks 0]
close [socket -server foo -myaddr 127.0.0.1 0]
puts done
"""
    ran = tclet(script, "--limit", "sockets=8", "--audit", str(audit))
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "1",
        "too many open sockets (limit 8)",
        "TCLETD QUOTA sockets 8",
        "1",
        "too many open sockets (limit 8)",
        "hello",
        "done",
    ]
    quota = audit_records(audit, "quota")
    assert [(q["quota"], q["limit"], q["value"], q["action"]) for q in quota] == [
        ("sockets", 8, 8, "refused"),
        ("sockets", 8, 8, "refused"),
    ]
    # A refused request changes nothing else: no decision was taken for it.
    decisions = audit_records(audit, "decision")
    assert len(decisions) == 1 + 7 + 1 + 1


def test_connects_per_second(tclet, echo: TcpServer, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    script = f"""
for {{set i 0}} {{$i < 5}} {{incr i}} {{close [socket 127.0.0.1 {echo.port}]}}
puts [catch {{socket 127.0.0.1 {echo.port}}} m]; puts $m
after 1100
close [socket 127.0.0.1 {echo.port}]
puts ok
"""
    ran = tclet(script, "--limit", "connects_per_second=5", "--audit", str(audit))
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines() == ["1", "too many connects per second (limit 5)", "ok"]
    (quota,) = audit_records(audit, "quota")
    assert quota["quota"] == "connects_per_second" and quota["value"] == 5


def _sink_counting(received: list[int]) -> TcpServer:
    def handler(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            received[0] += len(data)

    return TcpServer(handler, "sink")


SEND_FLOOD = """
set s [socket 127.0.0.1 [lindex $argv 0]]
fconfigure $s -translation binary -buffering none
set chunk [string repeat x 65536]
set deadline [expr {[clock milliseconds] + 10000}]
while {[clock milliseconds] < $deadline} {
    if {[catch {puts -nonewline $s $chunk} e]} {puts "write failed"; break}
}
puts [catch {socket 127.0.0.1 [lindex $argv 0]} m]; puts $m
after 300 {set done 1}; vwait done
"""


def test_refusals_are_paced_only_for_a_tclet_that_keeps_at_it() -> None:
    quotas = TcletQuotas(Quotas(), HostTotals(max_workers=1, max_sockets=8))
    now = 100.0
    pauses = [quotas.refusal_pause(now + i * 0.001) for i in range(REFUSALS_PER_SECOND + 5)]
    assert pauses[:REFUSALS_PER_SECOND] == [0.0] * REFUSALS_PER_SECOND
    assert pauses[REFUSALS_PER_SECOND:] == [REFUSAL_PAUSE] * 5
    assert quotas.refusal_pause(now + 2.0) == 0.0  # the window moved on: no pause


def test_a_refused_request_loop_is_slowed_down_and_goes_on(tclet) -> None:
    """A tclet that keeps asking for what it is refused waits for each refusal past the first
    REFUSALS_PER_SECOND a second: the host answers it a few dozen times a second, not thousands,
    and the tclet still gets every refusal as its Tcl error."""
    script = (
        "set end [expr {[clock milliseconds] + 2000}]\nset n 0\n"
        "while {[clock milliseconds] < $end} {catch {socket 127.0.0.1 25} m; incr n}\n"
        "puts $n\nputs $m\n"
    )
    ran = tclet(
        script,
        "--limit",
        "connects_per_second=100000",  # the policy refuses them, not the rate quota
        policy="home",
        origin="http://127.0.0.1:8080/t.tcl",
    )
    assert ran.status == 0, ran.stderr
    count, message = ran.stdout.splitlines()
    # Unpaced, this loop makes thousands of requests in 2 s here; paced: 50 at once, then
    # one per REFUSAL_PAUSE.
    assert REFUSALS_PER_SECOND <= int(count) <= 2 * REFUSALS_PER_SECOND + 2 / REFUSAL_PAUSE
    assert message == "permission denied for host 127.0.0.1 port 25"


def test_bytes_sent_quota_shuts_sockets_down(tclet, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    received = [0]
    with _sink_counting(received) as sink:
        tclet(
            SEND_FLOOD,
            "--limit",
            "bytes_sent=256KiB",
            "--limit",
            "send_rate=4MiB/s",
            "--audit",
            str(audit),
            argv=[str(sink.port)],
        )
    (quota,) = [q for q in audit_records(audit, "quota") if q["action"] == "sockets shut down"]
    assert quota["quota"] == "bytes_sent" and quota["limit"] == 256 * 1024
    assert isinstance(quota["value"], int) and quota["value"] > 256 * 1024
    # Without the shutdown the tclet would send for 10 s at 4 MiB/s (40 MiB). With it, what is
    # already in the send buffer still drains (paced) after the FIN is queued: a few MiB at most.
    assert received[0] < 8 * 2**20


def test_bytes_sent_quota_tells_the_tclet(tclet) -> None:
    received = [0]
    with _sink_counting(received) as sink:
        ran = tclet(SEND_FLOOD, "--limit", "bytes_sent=256KiB", argv=[str(sink.port)])
    message = "bytes sent quota exceeded (limit 256 KiB): sockets shut down"
    assert ran.stdout.splitlines() == ["write failed", "1", message], ran.stderr
    assert message in ran.stderr


def test_bytes_received_quota(tclet, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"

    def source(conn: socket.socket) -> None:
        block = b"y" * 65536
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.sendall(block)

    script = """
set s [socket 127.0.0.1 [lindex $argv 0]]
fconfigure $s -translation binary
set n 0
while {1} {
    if {[catch {read $s 65536} d]} {puts "read failed"; break}
    if {[eof $s]} {puts eof; break}
    incr n [string length $d]
}
puts [catch {socket 127.0.0.1 [lindex $argv 0]} m]; puts $m
"""
    with TcpServer(source, "source") as server:
        ran = tclet(
            script,
            "--limit",
            "bytes_received=1MiB",
            "--audit",
            str(audit),
            argv=[str(server.port)],
        )
    (quota,) = [q for q in audit_records(audit, "quota") if q["action"] == "sockets shut down"]
    assert quota["quota"] == "bytes_received" and quota["limit"] == 2**20
    assert isinstance(quota["value"], int) and quota["value"] > 2**20
    lines = ran.stdout.splitlines()
    assert lines[0] in ("eof", "read failed"), ran.stderr
    message = "bytes received quota exceeded (limit 1 MiB): sockets shut down"
    assert lines[1:] == ["1", message]
    assert message in ran.stderr


def test_send_rate_is_paced_by_the_kernel(tclet) -> None:
    size = 1536 * 1024
    times: list[float] = []
    count = [0]

    def handler(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            if not times:
                times.append(time.monotonic())
            count[0] += len(data)
        times.append(time.monotonic())

    script = f"""
set s [socket 127.0.0.1 [lindex $argv 0]]
fconfigure $s -translation binary
puts -nonewline $s [string repeat z {size}]
close $s
"""
    with TcpServer(handler, "timed") as server:
        ran = tclet(script, "--limit", "send_rate=512KiB/s", argv=[str(server.port)])
        deadline = time.monotonic() + 10
        while len(times) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert ran.status == 0, ran.stderr
    assert count[0] == size
    elapsed = times[1] - times[0]
    print(f"{size} bytes at 512 KiB/s took {elapsed:.2f} s on loopback")
    # 3 s at the rate; the first window goes out unpaced, so allow for it.
    assert elapsed > 1.5


def test_tcp_info_counts_bytes_on_a_duplicate() -> None:
    with TcpServer(echo_handler) as echo:
        sock = socket.create_connection(("127.0.0.1", echo.port))
        dup = sock.dup()
        sock.sendall(b"a" * 10000)
        got = 0
        while got < 10000:
            got += len(sock.recv(65536))
        counts = tcp_bytes(dup)
        assert counts is not None
        # tcpi_bytes_acked also counts the SYN (and a FIN) as one sequence number each.
        assert 10000 <= counts[0] <= 10002 and counts[1] == 10000
        dup.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, 12345)
        sock.close()
        dup.close()


def test_output_quota_ends_the_tclet(tclet, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    ran = tclet(
        "while 1 {puts [string repeat x 999]}",
        "--limit",
        "output_bytes=64KiB",
        "--audit",
        str(audit),
    )
    assert ran.status == 137
    assert ran.stderr.endswith("tcletd: tclet ended: output quota 64 KiB\n")
    assert len(ran.stdout) == 64 * 1024
    (quota,) = audit_records(audit, "quota")
    assert quota["quota"] == "output_bytes" and quota["action"] == "ended"
    (exit_record,) = audit_records(audit, "exit")
    assert (exit_record["status"], exit_record["reason"]) == (137, "output quota 64 KiB")


def test_host_worker_total() -> None:
    async def scenario() -> str:
        async with Host(max_workers=2) as host:
            quiet = {"on_stdout": lambda _b: None, "on_stderr": lambda _b: None}
            a = host.launch("after 10000 {exit 0}", policy="trusted", **quiet)  # type: ignore[arg-type]
            b = host.launch("after 10000 {exit 0}", policy="trusted", **quiet)  # type: ignore[arg-type]
            with pytest.raises(HostFull) as info:
                host.launch("exit 0", policy="trusted")
            await a.end("test over")
            await a.wait()
            c = host.launch("exit 3", policy="trusted", **quiet)  # type: ignore[arg-type]
            assert (await c.wait()).status == 3
            await b.end("test over")
            return str(info.value)

    assert asyncio.run(scenario()) == "too many tclets on this host (limit 2)"


def test_host_socket_total(echo: TcpServer) -> None:
    async def scenario() -> str:
        out: list[bytes] = []
        ready = asyncio.Event()

        def on_a(data: bytes) -> None:
            ready.set()

        async with Host(max_sockets=2) as host:
            a = host.launch(
                f"set a [socket 127.0.0.1 {echo.port}]; set b [socket 127.0.0.1 {echo.port}]\n"
                "puts ready; flush stdout; after 10000 {exit 0}\n",
                policy="trusted",
                on_stdout=on_a,
                on_stderr=lambda _b: None,
            )
            await asyncio.wait_for(ready.wait(), 10)
            result = await host.run_tclet(
                f"puts [catch {{socket 127.0.0.1 {echo.port}}} m]; puts $m",
                policy="trusted",
                on_stdout=out.append,
                on_stderr=lambda _b: None,
            )
            assert result.status == 0
            await a.end("test over")
        return b"".join(out).decode()

    assert asyncio.run(scenario()).splitlines() == [
        "1",
        "too many open sockets on this host (limit 2)",
    ]


def test_bad_limit_exits_2_naming_the_key(tclet) -> None:
    for bad, key in [
        ("memory=lots", "limits.memory"),
        ("cpu=10x", "limits.cpu"),
        ("sockets=-1", "sockets"),
        ("nosuch=1", "nosuch"),
        ("bytes_sent", "bytes_sent"),
    ]:
        ran = tclet("puts never", "--limit", bad)
        assert ran.status == 2, (bad, ran.stderr)
        assert key in ran.stderr and ran.stdout == "", (bad, ran.stderr)


@pytest.mark.parametrize("good", ["memory=256MiB", "cpu=10s", "memory=1.5GB", "wall=1.5m"])
def test_good_limits_are_accepted(tclet, good: str) -> None:
    ran = tclet("puts ok", "--limit", good)
    assert (ran.status, ran.stdout) == (0, "ok\n"), ran.stderr
