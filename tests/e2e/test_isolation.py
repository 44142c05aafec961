"""A tclet cannot reach past its sandbox: no extra descriptors, no host state, no orphans.

Real ``tcletd run`` processes; one tclet against another on one host is host/test_containment.py,
the worker's import closure unit/test_imports.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from support.processes import TcletRunner, tcletd_process
from support.system import descendants, pid_alive
from support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def test_chan_pipe_is_gone_in_tclet_and_its_children(tclet: TcletRunner) -> None:
    script = """
puts [catch {chan pipe} m]
puts [catch {::tcl::chan::pipe} m]
interp create kid
puts [catch {kid eval {chan pipe}} m]
puts [catch {kid eval {::tcl::chan::pipe}} m]
kid eval {interp create grandkid}
puts [catch {kid eval {grandkid eval {chan pipe}}} m]
puts [kid eval {expr {1+1}}]
"""
    ran = tclet(script)
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines() == ["1", "1", "1", "1", "1", "2"]


@pytest.mark.parametrize(
    "command",
    [
        "open /etc/passwd",
        "exec /bin/true",
        "file delete /tmp/x",
        "load libc.so.6",
        "source /etc/passwd",
        "cd /",
        "glob /*",
    ],
)
def test_no_filesystem_or_process_access(tclet: TcletRunner, command: str) -> None:
    ran = tclet(f"puts [catch {{{command}}} m]; puts $m")
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines()[0] == "1", ran.stdout


def test_tclet_sees_no_host_details(tclet: TcletRunner) -> None:
    ran = tclet("puts [info nameofexecutable]|[pid]")
    exe, pid = ran.stdout.strip().split("|")
    assert exe == ""
    assert int(pid) != os.getpid()


def test_no_orphans_when_host_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "sleepy.tcl"
    script.write_text("puts ready; flush stdout; after 60000 {exit 0}\n")
    with tcletd_process(
        ["run", "--policy", "trusted", str(script)], stderr=subprocess.DEVNULL
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        below = descendants(proc.pid)
        assert len(below) >= 2  # the zygote and the worker
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)

        def alive() -> list[int]:
            return sorted(pid for pid in below if pid_alive(pid))

        wait_until(lambda: not alive(), 5, message=lambda: f"left behind: {alive()}")
