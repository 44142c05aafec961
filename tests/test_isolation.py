"""A tclet cannot reach past its sandbox: no extra descriptors, no host state, no other tclet."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tcletd.api import Host
from tests.conftest import ROOT, tcletd_process
from tests.netutil import TcpServer, echo_handler

pytestmark = pytest.mark.timeout(60)


def test_chan_pipe_is_gone_in_tclet_and_its_children(tclet) -> None:
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
def test_no_filesystem_or_process_access(tclet, command: str) -> None:
    ran = tclet(f"puts [catch {{{command}}} m]; puts $m")
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines()[0] == "1", ran.stdout


def test_tclet_sees_no_host_details(tclet) -> None:
    ran = tclet("puts [info nameofexecutable]|[pid]")
    exe, pid = ran.stdout.strip().split("|")
    assert exe == ""
    assert int(pid) != os.getpid()


def test_tclets_cannot_touch_each_others_channels() -> None:
    async def scenario() -> tuple[str, str]:
        out_a: list[bytes] = []
        out_b: list[bytes] = []
        with TcpServer(echo_handler) as echo:
            async with Host() as host:
                a = host.launch(
                    f"set s [socket 127.0.0.1 {echo.port}]\nputs $s\nflush stdout\n"
                    "after 3000 {exit 0}\n",
                    policy="trusted",
                    on_stdout=out_a.append,
                    on_stderr=lambda _b: None,
                )
                for _ in range(100):
                    if out_a:
                        break
                    await asyncio.sleep(0.05)
                name = b"".join(out_a).decode().strip()
                b = await host.run_tclet(
                    f"puts [catch {{puts {name} intruder}} m]; puts $m",
                    policy="trusted",
                    on_stdout=out_b.append,
                    on_stderr=lambda _b: None,
                )
                assert b.status == 0
                await a.end("test over")
                await a.wait()
        return name, b"".join(out_b).decode()

    name, b_out = asyncio.run(scenario())
    assert name.startswith("sock")
    assert b_out.splitlines() == ["1", f'can not find channel named "{name}"']


def test_worker_imports_nothing_from_host() -> None:
    code = (
        "import sys, tcletd.worker.main\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('tcletd.host', 'tcletd.api')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_orphans_when_host_is_killed(tmp_path) -> None:
    script = tmp_path / "sleepy.tcl"
    script.write_text("puts ready; flush stdout; after 60000 {exit 0}\n")
    with tcletd_process(
        ["run", "--policy", "trusted", str(script)], stderr=subprocess.DEVNULL
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 2  # the fork server and the worker (and a resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        alive = descendants
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.05)
        assert alive == [], f"left behind: {alive}"
