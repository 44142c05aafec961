"""Quotas as a tclet meets them: sockets, connects per second, bytes, pacing, output.

Real ``tcletd run`` processes, real loopback servers; each test fails if its mechanism is broken
(no quota, wrong text, a slot not freed, bytes not counted).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from support.audit import audit_records
from support.net import TcpServer
from support.processes import TcletRunner
from support.waiting import wait_until

from tcletd.host.quotas import REFUSAL_PAUSE, REFUSALS_PER_SECOND

pytestmark = pytest.mark.timeout(60)


def test_socket_quota_error_and_close_frees_a_slot(
    tclet: TcletRunner, echo: TcpServer, tmp_path: Path
) -> None:
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


def test_connects_per_second(tclet: TcletRunner, echo: TcpServer, tmp_path: Path) -> None:
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


def test_a_refused_request_loop_is_slowed_down_and_goes_on(tclet: TcletRunner) -> None:
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


def test_bytes_sent_quota_shuts_sockets_down(tclet: TcletRunner, tmp_path: Path) -> None:
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


def test_bytes_sent_quota_tells_the_tclet(tclet: TcletRunner) -> None:
    received = [0]
    with _sink_counting(received) as sink:
        ran = tclet(SEND_FLOOD, "--limit", "bytes_sent=256KiB", argv=[str(sink.port)])
    message = "bytes sent quota exceeded (limit 256 KiB): sockets shut down"
    assert ran.stdout.splitlines() == ["write failed", "1", message], ran.stderr
    assert message in ran.stderr


def test_bytes_received_quota(tclet: TcletRunner, tmp_path: Path) -> None:
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


def test_send_rate_is_paced_by_the_kernel(tclet: TcletRunner) -> None:
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
        wait_until(lambda: len(times) >= 2, message="the server never saw the end of the data")
    assert ran.status == 0, ran.stderr
    assert count[0] == size
    elapsed = times[1] - times[0]
    print(f"{size} bytes at 512 KiB/s took {elapsed:.2f} s on loopback")
    # 3 s at the rate; the first window goes out unpaced, so allow for it.
    assert elapsed > 1.5


def test_output_quota_ends_the_tclet(tclet: TcletRunner, tmp_path: Path) -> None:
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


def test_bad_limit_exits_2_naming_the_key(tclet: TcletRunner) -> None:
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
def test_good_limits_are_accepted(tclet: TcletRunner, good: str) -> None:
    ran = tclet("puts ok", "--limit", good)
    assert (ran.status, ran.stdout) == (0, "ok\n"), ran.stderr
