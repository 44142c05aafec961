"""The worked client of docs/protocol.md (examples/tcletd-client.pl, Perl with perl-base only)
against a real ``tcletd serve``: launch, wait, logs and ps as the protocol documents them, and
a hello naming another protocol version refused with the host's clear error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from support import EXAMPLES
from support.processes import Ran, run_bounded
from support.wire import serving

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("perl") is None, reason="needs perl"),
]

CLIENT = EXAMPLES / "tcletd-client.pl"
ID = re.compile(r"[0-9a-f]{12}")


def perl(sock: Path, *args: str, env: Mapping[str, str] | None = None) -> Ran:
    """``perl examples/tcletd-client.pl SOCK ARGS`` as a bounded process of its own."""
    command = ["perl", str(CLIENT), str(sock), *args]
    if env is None:
        return run_bounded(command, 30)
    # run_bounded takes no environment: the variable goes through env(1).
    return run_bounded(["env", *(f"{k}={v}" for k, v in env.items()), *command], 30)


def test_the_perl_client_launches_waits_reads_logs_and_lists(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    seven = tmp_path / "seven.tcl"
    seven.write_text('puts stderr "going with 7"\nexit 7\n')
    with serving(sock):
        launched = perl(sock, "launch", str(EXAMPLES / "hello.tcl"), "one", 'two "quoted"')
        assert launched.status == 0, launched
        tclet = launched.stdout.strip()
        assert ID.fullmatch(tclet), launched

        waited = perl(sock, "wait", tclet[:6])  # a prefix names it too
        assert waited.status == 0, waited

        logs = perl(sock, "logs", tclet)
        assert logs.status == 0, logs
        assert logs.stdout.startswith("Hello from a tclet!\n"), logs
        assert 'argv (2): one {two "quoted"}\n' in logs.stdout, logs

        other = perl(sock, "launch", str(seven)).stdout.strip()
        sevened = perl(sock, "wait", other)
        assert sevened.status == 7, sevened  # wait exits with the tclet's status
        assert perl(sock, "logs", other).stderr == "going with 7\n"

        running = perl(sock, "ps")
        assert running.status == 0 and tclet not in running.stdout, running  # ended: not listed
        every = perl(sock, "ps", "--all")
        assert every.status == 0, every
        rows = {line.split()[0]: line.split() for line in every.stdout.splitlines()}
        assert rows[tclet][1:4] == ["ended", "home", "0"], every
        assert rows[tclet][4] == str(EXAMPLES / "hello.tcl"), every
        assert rows[other][1:4] == ["ended", "home", "7"], every


def test_a_hello_of_another_version_gets_the_hosts_clear_error(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    with serving(sock):
        refused = perl(sock, "ps", env={"TCLETD_CLIENT_PROTOCOL": "2"})
        missing = perl(sock, "wait", "0000")
    assert refused.status == 2, refused
    assert refused.stderr == (
        "tcletd-client: hello: protocol version 2 is not spoken by this host (it speaks 1); "
        "use a tcletd client of the host's version\n"
    )
    assert missing.status == 1, missing
    assert missing.stderr == "tcletd-client: no such tclet: 0000\n"


def test_the_client_uses_perl_base_modules_only() -> None:
    """perl-base is Essential on Debian: a client that needs only it runs on every machine."""
    found = subprocess.run(
        ["perl", "-e", "print join qq(\\n), grep { m{/perl-base\\b} } @INC"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    if not found:
        pytest.skip("this perl has no perl-base directory (not Debian's)")
    modules = re.findall(r"^use ([\w:]+)", CLIENT.read_text(), re.MULTILINE)
    assert modules, "the scan sees the client's modules"
    for module in modules:
        relative = module.replace("::", "/") + ".pm"
        assert any(os.path.exists(os.path.join(d, relative)) for d in found), module
