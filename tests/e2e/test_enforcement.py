"""The policy as a tclet meets it: denials, bypass spellings, origin rules, hidden options."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.net import TcpServer
from support.processes import TcletRunner

pytestmark = pytest.mark.timeout(60)


def _probe(target_host: str, target_port: str) -> str:
    return (
        f"set rc [catch {{socket {{{target_host}}} {{{target_port}}}}} msg opts]\n"
        "puts $rc; puts $msg; puts [dict get $opts -errorcode]; puts alive\n"
    )


def test_home_allows_origin_host_above_1024(tclet: TcletRunner, echo: TcpServer) -> None:
    script = (
        f"set s [socket 127.0.0.1 {echo.port}]\nputs $s ping; flush $s; puts [gets $s]; close $s\n"
    )
    ran = tclet(script, policy="home", origin=f"http://127.0.0.1:{echo.port}/t.tcl")
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "ping\n"


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1"])
def test_other_spellings_of_the_origin_host_are_the_origin_host(
    tclet: TcletRunner, echo: TcpServer, spelling: str
) -> None:
    script = f"set s [socket {spelling} {echo.port}]\nputs $s hi; flush $s; puts [gets $s]\n"
    ran = tclet(script, policy="home", origin=f"http://127.0.0.1:{echo.port}/t.tcl")
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "hi\n"


def test_empty_host_means_origin_socket_host(tclet: TcletRunner, echo: TcpServer) -> None:
    script = f'set s [socket "" {echo.port}]\nputs $s x; flush $s; puts [gets $s]\n'
    ran = tclet(script, policy="home", origin=f"http://127.0.0.1:{echo.port}/t.tcl")
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "x\n"


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("127.0.0.1", "22", "permission denied for host 127.0.0.1 port 22"),
        ("2130706433", "25", "permission denied for host 2130706433 port 25"),
        ("0x7f000001", "22", "permission denied for host 0x7f000001 port 22"),
        ("127.1", "1024", "permission denied for host 127.1 port 1024"),
        ("127.0.0.2", "8080", "permission denied for host 127.0.0.2 port 8080"),
        ("127.0.0.1", "0x1f90", "permission denied: non numeric port 0x1f90"),
        ("127.0.0.1", "017620", "permission denied: non numeric port 017620"),
        ("127.0.0.1", "+8080", "permission denied: non numeric port +8080"),
        ("127.0.0.1", " 8080", "permission denied: non numeric port  8080"),
        ("127.0.0.1", "http", "permission denied: non numeric port http"),
    ],
)
def test_home_denials_are_tcl_errors_and_the_tclet_goes_on(
    tclet: TcletRunner, host: str, port: str, message: str
) -> None:
    # The bypass spellings of a port must never reach a port rule as a number.
    ran = tclet(_probe(host, port), policy="home", origin="http://127.0.0.1:8080/t.tcl")
    assert ran.status == 0, ran.stderr
    rc, msg, _code, alive = ran.stdout.splitlines()
    assert (rc, msg, alive) == ("1", message, "alive")


def test_disallow_rule_cannot_be_bypassed_by_spelling(
    tclet: TcletRunner, tmp_path: Path, echo: TcpServer
) -> None:
    policy = tmp_path / "nolo.toml"
    policy.write_text('[connect]\nallow = ["* *"]\ndisallow = ["loopback *"]\n')
    for spelling in (
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "::ffff:127.0.0.1",
        "[::1]",
        "localhost",
        "LOCALHOST.",
    ):
        ran = tclet(_probe(spelling, str(echo.port)), policy=str(policy))
        assert ran.status == 0, ran.stderr
        assert ran.stdout.splitlines()[0] == "1", (spelling, ran.stdout)
        assert "permission denied for host" in ran.stdout


def test_refused_connect_has_tcls_error(tclet: TcletRunner, closed_port: int) -> None:
    ran = tclet(_probe("127.0.0.1", str(closed_port)))
    assert ran.stdout.splitlines() == [
        "1",
        "couldn't open socket: connection refused",
        "POSIX ECONNREFUSED {connection refused}",
        "alive",
    ]


HIDE = """
set s [socket 127.0.0.1 $port]
puts [catch {fconfigure $s -peername} m]; puts $m
puts [catch {fconfigure $s -peer} m]; puts $m
puts [catch {chan configure $s -peername} m]; puts $m
puts [string match *-peername* [fconfigure $s]]
puts [string match *-peername* [chan configure $s]]
puts [lindex [fconfigure $s -sockname] 0]
puts [fconfigure $s -blocking]
close $s
"""


def test_peername_hidden_everywhere_under_home(tclet: TcletRunner, echo: TcpServer) -> None:
    ran = tclet(
        f"set port {echo.port}\n{HIDE}",
        policy="home",
        origin=f"http://127.0.0.1:{echo.port}/",
    )
    assert ran.status == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == lines[2] == lines[4] == "1"
    assert lines[1].startswith('bad option "-peername": should be one of -blocking')
    assert lines[3].startswith('bad option "-peer": should be one of -blocking')
    assert lines[5] == lines[1]
    assert all("-peername," not in lines[i] and "-sockname" in lines[i] for i in (1, 3, 5))
    assert lines[6:] == ["0", "0", "127.0.0.1", "1"]


def test_trusted_hides_nothing(tclet: TcletRunner, echo: TcpServer) -> None:
    script = f"set s [socket 127.0.0.1 {echo.port}]\nputs [lindex [fconfigure $s -peer] 0]\n"
    ran = tclet(script, policy="trusted")
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "127.0.0.1\n"


def test_home_refuses_listening(tclet: TcletRunner) -> None:
    ran = tclet(
        "puts [catch {socket -server cb -myaddr 127.0.0.1 0} m]; puts $m",
        policy="home",
        origin="http://127.0.0.1:8080/",
    )
    assert ran.stdout.splitlines() == ["1", "permission denied for host 127.0.0.1 port 0"]


def test_accept_rules_check_each_peer(tclet: TcletRunner, tmp_path: Path) -> None:
    policy = tmp_path / "srv.toml"
    policy.write_text(
        '[connect]\nallow = ["127.0.0.1 *"]\n'
        '[listen]\nallow = ["127.0.0.1 *"]\n'
        '[accept]\nallow = ["127.0.0.1 *"]\ndisallow = ["127.0.0.1 <1024"]\n'
    )
    script = """
proc cb {ch addr port} { puts "accepted $addr"; close $ch; set ::done 1 }
set srv [socket -server cb -myaddr 127.0.0.1 0]
set port [lindex [fconfigure $srv -sockname] 2]
set c [socket 127.0.0.1 $port]
vwait ::done
close $c; close $srv
"""
    ran = tclet(script, policy=str(policy))
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "accepted 127.0.0.1\n"
