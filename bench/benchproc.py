"""Processes the benchmarks start and end: a helper in a session of its own (ended by its
group's id), the ``tcletd`` command as users run it, a resident host, a bounded run.

Benchmark support only (no part of tcletd): everything started here is ended here, by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "examples" / "hello.tcl"


@contextlib.contextmanager
def background(cmd: Sequence[str], *, ready_on_stderr: bool = False) -> Iterator[str]:
    """A helper process in a session of its own, and the first line it prints (it is ready).

    On the way out it is asked to stop (stdin closed, SIGTERM), then killed by its group's id.
    """
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL if ready_on_stderr else subprocess.PIPE,
        stderr=subprocess.PIPE if ready_on_stderr else None,
        text=True,
        start_new_session=True,
    )
    try:
        stream = proc.stderr if ready_on_stderr else proc.stdout
        assert stream is not None
        yield stream.readline()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tcletd_command() -> list[str]:
    """The installed ``tcletd`` script, as users run it (else ``python -m tcletd``)."""
    script = Path(sys.executable).parent / "tcletd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tcletd"]


@contextlib.contextmanager
def resident_host(
    run_dir: Path, *serve_args: str, tcletd: Sequence[str] | None = None
) -> Iterator[str]:
    """A ``tcletd serve`` (with ``serve_args``; ``tcletd``: the command, by default the
    installed script) for the resident runtime; its control socket's path."""
    sock = run_dir / "control.sock"
    command = [*(tcletd or tcletd_command()), "serve", "--socket", str(sock), *serve_args]
    with background(command, ready_on_stderr=True) as line:
        if not line.startswith("tcletd: serving on"):
            raise RuntimeError(f"tcletd serve did not start: {line!r}")
        yield str(sock)


def run_bounded(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """subprocess.run with the child in its own group, killed by PID on timeout."""
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, -signal.SIGKILL, out, err + "\n[timed out]")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
