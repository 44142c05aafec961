"""A second ``tcletd serve`` on a live host's socket exits 73 (not 70, "internal error") and
names the host that holds it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from support.processes import run_tcletd
from support.wire import serving, tiny_run

from tcletd.shared.errors import EXIT_IN_USE

pytestmark = pytest.mark.timeout(60)


def test_a_second_host_on_a_live_socket_names_the_holder(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    with serving(sock) as first:
        second = run_tcletd(["serve", "--socket", str(sock)], timeout=30)
        assert second.status == EXIT_IN_USE, second
        assert second.stderr == (
            f"tcletd: serve: {sock} is in use by a tcletd host (pid {first.pid})\n"
        ), second
        assert first.proc.poll() is None
        tiny_run(sock)  # the first host still serves, its socket untouched


def test_a_socket_whose_lock_is_held_is_in_use_before_it_listens(tmp_path: Path) -> None:
    """A host between taking the lock and listening (starting up) has no pid to show yet."""
    sock = tmp_path / "control.sock"
    lock = os.open(f"{sock}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ran = run_tcletd(["serve", "--socket", str(sock)], timeout=30)
    finally:
        os.close(lock)
    assert ran.status == EXIT_IN_USE, ran
    assert ran.stderr == f"tcletd: serve: {sock} is in use by a tcletd host (starting up)\n", ran


def test_the_status_is_documented() -> None:
    from support import ROOT

    from tcletd.cli.commands import SERVE_EPILOG

    assert f"{EXIT_IN_USE} the socket is in use" in SERVE_EPILOG
    readme = (ROOT / "README.md").read_text()
    assert f"| {EXIT_IN_USE} | `tcletd serve`: " in readme
