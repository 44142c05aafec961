"""``--nameserver`` on ``tcletd run``, ``tcletd serve`` and ``tcletd policy check``, and the
suite's own ``TCLETD_NAMESERVERS``: every lookup goes to a DNS server the test started on
127.0.0.1, and a name the policy denies anyway is never looked up, by the tool as by the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dns import DnsServer
from support.net import TcpServer
from support.processes import TcletRunner, run_tcletd, tcletd_process, wait_serving

pytestmark = pytest.mark.timeout(90)

ORIGIN = "http://tclets.example:8080/t.tcl"
PROBE = """
set port [lindex $argv 0]
puts [catch {socket exfil-1.leak.example $port} m]; puts $m
set s [socket tclets.example $port]; puts $s hi; flush $s; puts [gets $s]; close $s
"""


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer({"tclets.example": ["127.0.0.1"]}) as server:
        yield server


def test_run_uses_its_nameserver_and_skips_denied_names(
    tclet: TcletRunner, dns: DnsServer, echo: TcpServer, session_dns: DnsServer
) -> None:
    before = len(session_dns.queries)
    ran = tclet(
        PROBE, "--nameserver", dns.address, policy="home", origin=ORIGIN, argv=[str(echo.port)]
    )
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "1",
        f"permission denied for host exfil-1.leak.example port {echo.port}",
        "hi",
    ]
    assert dns.asked("leak.example") == [] and dns.asked("tclets.example") != []
    assert len(session_dns.queries) == before  # --nameserver, not the suite's default


def test_run_without_option_uses_tcletd_nameservers(
    tclet: TcletRunner, echo: TcpServer, session_dns: DnsServer
) -> None:
    ran = tclet(f"puts [catch {{socket nowhere-7.example {echo.port}}} m]; puts $m")
    assert ran.stdout.splitlines() == ["1", "couldn't open socket: Name or service not known"]
    assert ("nowhere-7.example", "A") in session_dns.queries


def test_bad_nameserver_is_a_usage_error() -> None:
    ran = run_tcletd(["run", "--nameserver", "dns.example", "-"], stdin="puts hi")
    assert ran.status == 2
    assert "nameserver 'dns.example': 'dns.example' is not an IP address" in ran.stderr


def test_policy_check_looks_up_only_what_the_host_would(dns: DnsServer) -> None:
    check = ["policy", "check", "--policy", "home", "--origin", ORIGIN, "--nameserver", dns.address]
    denied = run_tcletd([*check, "exfil-2.leak.example", "8080"])
    assert denied.status == 1 and "not looked up" in denied.stdout
    allowed = run_tcletd([*check, "tclets.example", "8080"])
    assert allowed.status == 0, allowed.stdout
    assert "  checked: 127.0.0.1" in allowed.stdout.splitlines()
    assert dns.asked("leak.example") == [] and dns.asked("tclets.example") != []


def test_serve_uses_its_nameserver(dns: DnsServer, echo: TcpServer, tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    script = tmp_path / "probe.tcl"
    script.write_text(PROBE)
    serve = ["serve", "--socket", str(sock), "--nameserver", dns.address]
    with tcletd_process(serve) as proc:
        wait_serving(proc)
        ran = run_tcletd(
            ["run", "--host", str(sock), "--origin", ORIGIN, str(script), "--", str(echo.port)]
        )
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "hi"
    assert dns.asked("leak.example") == [] and dns.asked("tclets.example") != []
