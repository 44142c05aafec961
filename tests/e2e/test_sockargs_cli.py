"""``socket``'s option values through ``tcletd run``: a real, sandboxed worker converts
``-myport`` as tclsh does, service names included (looked up inside the worker's sandbox)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support.processes import TcletRunner

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh to compare with"),
]

PROBE = """
foreach c {
    {-myport xxxx} {-myport http} {-myport 99999 h p} {-myport 0x50} {-myport 4294967296 h p}
    {-server cb -myport tcpmux 0} {-server cb -myport xx 0} {-server cb -myport 0x0}
} {
    set r [catch {socket {*}$c} m o]
    puts [list $c $r $m [dict get $o -errorcode]]
}
"""


def test_option_values_as_tclsh_reads_them(tclet: TcletRunner) -> None:
    expected = subprocess.run(
        ["tclsh"], input=PROBE, capture_output=True, text=True, timeout=20, check=True
    ).stdout
    ran = tclet(PROBE, policy="home")
    assert (ran.status, ran.stderr) == (0, "")
    assert ran.stdout == expected


SOCKNAMES = """
foreach addr {127.0.0.1 ::1} {
    if {[catch {socket -server cb -myaddr $addr 0} s]} { puts "$addr unavailable"; continue }
    lassign [fconfigure $s -sockname] a name port
    puts [list $a $name [string is integer -strict $port]]
    close $s
}
"""


def test_a_servers_sockname_names_its_address_as_tclsh_does(tclet: TcletRunner) -> None:
    # The host answers -sockname's hostname with its own reverse lookup (c-ares); an IPv6
    # address once broke the listen ("internal host error") and then came back as "::1%0".
    expected = subprocess.run(
        ["tclsh"], input=SOCKNAMES, capture_output=True, text=True, timeout=20, check=True
    ).stdout
    ran = tclet(SOCKNAMES, policy="trusted")
    assert (ran.status, ran.stderr) == (0, "")
    assert ran.stdout == expected
