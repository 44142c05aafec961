"""Liveness as a ``tcletd run`` user meets it: a busy tclet is not ended for being busy, and
SIGUSR1 prints the tclet's status line."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.processes import TcletRunner, tcletd_process

pytestmark = pytest.mark.timeout(60)


def test_busy_is_not_a_reason_to_end(tclet: TcletRunner) -> None:
    # Computing for 2 s without returning to the event loop is allowed under the limits.
    script = "set t [expr {[clock milliseconds] + 2000}]\nwhile {[clock milliseconds] < $t} {}\n"
    ran = tclet(script + "puts survived")
    assert (ran.status, ran.stdout) == (0, "survived\n"), ran.stderr


def test_sigusr1_prints_a_status_line(tmp_path: Path) -> None:
    script = tmp_path / "sleepy.tcl"
    script.write_text("puts ready; flush stdout; after 20000 {exit 0}\n")
    with tcletd_process(["run", str(script)]) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"ready\n"
        os.kill(proc.pid, signal.SIGUSR1)
        line = proc.stderr.readline().decode()
        os.kill(proc.pid, signal.SIGTERM)
        _, rest = proc.communicate(timeout=10)
    assert line.startswith("tcletd: tclet "), line
    for word in (" policy home ", " state ", " sockets 0 ", " sent 0 B ", " cpu ", " rss "):
        assert word in line, line
    assert proc.returncode == 143
    assert rest.decode() == "tcletd: tclet ended: tcletd got SIGTERM\n"
