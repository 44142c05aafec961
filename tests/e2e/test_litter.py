"""Nothing piles up across runs: what hosts killed with SIGKILL leave behind (their run
directories, a resident host's control socket) is
reclaimed by the next host. Finding 9. Every process here gets a private TMPDIR, so the test
sees only its own directories."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT
from support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _litter(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("tcletd-", "pymp-")))


class Env:
    """Runs ``python -m tcletd`` with TMPDIR pointing at a private directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.env = {**os.environ, "TMPDIR": str(self.tmp)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tcletd", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str) -> str:
        """Run to its end (30 s at most); its stdout and stderr."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "tcletd", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return out.decode(errors="replace")

    def end_all(self) -> None:
        """Whatever is left of every process group we started (workers of killed hosts too)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()


@contextlib.contextmanager
def private_tmp(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    try:
        yield env
    finally:
        env.end_all()


def _serving(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert line.startswith("tcletd: serving on "), line


def test_killed_hosts_leave_nothing_behind(tmp_path: Path) -> None:
    long = tmp_path / "long.tcl"
    long.write_text("while 1 { after 100 }\n")
    hi = tmp_path / "hi.tcl"
    hi.write_text("puts hi\n")
    sock = tmp_path / "ctl" / "control.sock"
    with private_tmp(tmp_path) as env:
        serve = env.start("serve", "--socket", str(sock))
        _serving(serve)
        env.start("run", "--host", str(sock), str(long))
        wait_until(lambda: "state" in env.run("status", "--host", str(sock)), timeout=20)
        embedded = env.start("run", str(long))
        # Each host: its run directory (the ROUTER's endpoint), and nothing else.
        wait_until(lambda: len(list(env.tmp.glob("tcletd-*/hub"))) == 2, timeout=20)
        dead = _litter(env.tmp)
        assert len(dead) == 2, dead

        for proc in (serve, embedded):
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert _litter(env.tmp) == dead  # what SIGKILL leaves
        assert sock.exists()

        # A new embedded host reclaims every dead host's directories, and leaves none itself.
        assert env.run("run", str(hi)).startswith("hi\n")
        assert _litter(env.tmp) == []

        # A new resident host takes the stale control socket over and serves on it.
        again = env.start("serve", "--socket", str(sock))
        _serving(again)
        assert "hi" in env.run("run", "--host", str(sock), str(hi))
        again.send_signal(signal.SIGTERM)
        assert again.wait(20) == 0
        assert not sock.exists()
        assert _litter(env.tmp) == []


def test_a_live_hosts_directories_are_never_reclaimed(tmp_path: Path) -> None:
    long = tmp_path / "long.tcl"
    long.write_text("while 1 { after 100 }\n")
    hi = tmp_path / "hi.tcl"
    hi.write_text("puts hi\n")
    with private_tmp(tmp_path) as env:
        env.start("run", str(long))
        wait_until(lambda: len(list(env.tmp.glob("tcletd-*/hub"))) == 1, timeout=20)
        live = _litter(env.tmp)
        # Beside them: a symlink with our prefix, never followed nor taken.
        (env.tmp / "tcletd-link").symlink_to(tmp_path)
        assert env.run("run", str(hi)).startswith("hi\n")
        assert _litter(env.tmp) == sorted([*live, "tcletd-link"])
        assert tmp_path.exists() and long.exists()
