"""``socket``'s argument errors in a tclet, compared with a real tclsh, message and errorcode.

Every case fails while Tcl parses the arguments (an option's value, an option, the count), so
tclsh opens no socket and the tclet's runtime must not ask the host either: its link fails any
request with a message tclsh never gives.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support.runtime import run_script

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh to compare with"),
]

# -myport values: Tcl integers of every spelling, in range or not, and what is no integer
VALUES = [
    "xxxx", "80", "+80", "-80", " 80 ", "\t80\n", "\v80\f\r", "0x50", "0X50", "0o120", "0O120",
    "0b1010000", "0120", "080", "09", "0d80", "0", "00", "-0", "+0", "0x0", "0x", "0o", "0b",
    "", " ", "-", "+", "1_0", "1e3", "1.0", "80x", "0x1g", "--80", "- 80", "0x-50", " +0x50 ",
    "0000000080", "65535", "65536", "99999", "-1", "-65536", "2147483647", "2147483648",
    "-2147483648", "-2147483649", "4294967295", "4294967296", "-4294967295", "-4294967296",
    "9223372036854775808", "99999999999999999999", "\u00a080", "0777777", "true",
]  # fmt: skip
# Where the value stands: alone, before a missing port, before a bad option, for a server (with
# and without its port's place taken by nothing), twice, after -async.
TEMPLATES = [
    "-myport {V}",
    "-myport {V} h",
    "-myport {V} -bogus h p",
    "-server cb -myport {V}",
    "-myaddr a -myport {V} -server cb",
    "-myport {V} -myport x",
    "-async -myport {V}",
]
STRUCTURE = [
    "", "h", "-server", "-server cb", "-server cb -myaddr", "-server cb -async 2",
    "-async -server cb 0", "-async", "-async h", "-myaddr", "-myport", "-myaddr 127.0.0.1",
    "-myaddr a -myaddr b", "-foo a b", "-my h p", "-- a b", "- a b", "-reuseaddr 1 a b",
    "a b c", "-server cb a b", "-server cb -myaddr a", "-as localhost 1", "h 2528 -junk",
    "-server callback 2520 --", "-server cb -myport 0 -server cb2", "-async -async",
    "-server foo -myport 2521 3333",
]  # fmt: skip


def _cases() -> list[str]:
    cases = [f"socket {c}" for c in STRUCTURE]
    for value in VALUES:
        quoted = "{" + value + "}" if value.strip() == value and value else f'"{value}"'
        cases += [f"socket {t.replace('{V}', quoted)}" for t in TEMPLATES]
    return cases


def test_option_value_errors_match_tclsh(capfd: pytest.CaptureFixture[str]) -> None:
    probe = "".join(
        f"set r [catch {{{c}}} m o]; puts [list {{{c}}} $r $m [dict get $o -errorcode]]\n"
        for c in _cases()
    )
    expected = subprocess.run(
        ["tclsh"], input=probe, capture_output=True, text=True, timeout=20, check=True
    ).stdout
    status, link = run_script(probe)
    out = capfd.readouterr().out
    assert status == 0
    assert link.requests == 0
    mismatches = [
        (want, got) for want, got in zip(expected.splitlines(), out.splitlines(), strict=True)
        if want != got
    ]  # fmt: skip
    assert not mismatches, "\n".join(f"tclsh:  {w}\ntcletd: {g}" for w, g in mismatches)
