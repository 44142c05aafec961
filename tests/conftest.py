"""Shared fixtures: run ``tcletd`` as a real process, bounded in time and ended by PID; wait for a
host-side condition or a resident host's readiness; read an audit log and a worker's scheduling
classes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netutil import run_bounded

ROOT = Path(__file__).resolve().parent.parent


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll a condition in the host's loop until it holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def wait_serving(proc: subprocess.Popen[bytes]) -> str:
    """The first line a ``tcletd serve`` process prints, once it serves."""
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert line.startswith("tcletd: serving on "), line
    return line


def audit_records(path: Path, event: str) -> list[dict[str, object]]:
    """An audit log's records of one event, in order."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


def sched_classes(pid: int) -> set[int]:
    """The scheduling policies of every thread of a process (os.SCHED_IDLE once demoted)."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@dataclass
class Ran:
    status: int
    stdout: str
    stderr: str


def run_tcletd(
    args: Sequence[str], *, stdin: str | None = None, timeout: float = 20.0, cwd: Path = ROOT
) -> Ran:
    """Run ``python -m tcletd ARGS``; on timeout the whole process group is killed by PID."""
    done = run_bounded([sys.executable, "-m", "tcletd", *args], timeout, str(cwd), stdin)
    if done.timed_out:
        raise AssertionError(
            f"tcletd {' '.join(args)} ran past {timeout}s\n"
            f"stdout: {done.stdout!r}\nstderr: {done.stderr!r}"
        )
    return Ran(done.returncode, done.stdout, done.stderr)


@contextlib.contextmanager
def tcletd_process(
    args: Sequence[str], *, stderr: int = subprocess.PIPE
) -> Iterator[subprocess.Popen[bytes]]:
    """A running ``python -m tcletd ARGS`` in a session of its own, for tests that talk to it or
    signal it; whatever is left of it (the host, its fork server, its workers) is killed by the
    process group's id on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcletd", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def run_tclet(
    script: str,
    *extra: str,
    policy: str | None = "trusted",
    origin: str | None = None,
    argv: Sequence[str] = (),
    tmp_path: Path,
    timeout: float = 20.0,
) -> Ran:
    """Write SCRIPT to a file and run it with ``tcletd run``."""
    path = tmp_path / "tclet.tcl"
    path.write_text(script)
    args = ["run"]
    if policy is not None:
        args += ["--policy", policy]
    if origin is not None:
        args += ["--origin", origin]
    args += [*extra, str(path)]
    if argv:
        args += ["--", *argv]
    return run_tcletd(args, timeout=timeout)


@pytest.fixture
def tclet(tmp_path: Path) -> Iterator[object]:
    """``tclet(script, ...)`` runs a tclet in a fresh ``tcletd run`` process."""

    def runner(script: str, *extra: str, **kw: object) -> Ran:
        return run_tclet(script, *extra, tmp_path=tmp_path, **kw)  # type: ignore[arg-type]

    yield runner
