"""Commands run as real processes, bounded in time and ended by PID: ``python -m tcletd ...``,
a resident host, a tclet run by ``tcletd run`` (the ``tclet`` fixture's runner)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from support import ROOT


@dataclass(frozen=True)
class Ran:
    """A finished command: its exit status and output (decoded), and whether it was killed
    for running past its deadline."""

    status: int
    stdout: str
    stderr: str
    timed_out: bool = False


def run_bounded(
    cmd: Sequence[str], timeout: float, cwd: str | Path | None = None, stdin: str | None = None
) -> Ran:
    """Run ``cmd`` with a hard deadline; on timeout kill its whole process group by id.

    The child gets its own session so that the kill also reaches anything it forked
    (tcletd's host forks workers) without touching any process we did not start.
    """
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin.encode() if stdin is not None else None, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        timed_out = True
    return Ran(
        status=proc.returncode,
        stdout=out.decode("utf-8", "backslashreplace"),
        stderr=err.decode("utf-8", "backslashreplace"),
        timed_out=timed_out,
    )


def run_tcletd(
    args: Sequence[str], *, stdin: str | None = None, timeout: float = 20.0, cwd: Path = ROOT
) -> Ran:
    """Run ``python -m tcletd ARGS``; running past ``timeout`` fails the test (after the whole
    process group is killed by PID)."""
    done = run_bounded([sys.executable, "-m", "tcletd", *args], timeout, cwd, stdin)
    if done.timed_out:
        raise AssertionError(
            f"tcletd {' '.join(args)} ran past {timeout}s\n"
            f"stdout: {done.stdout!r}\nstderr: {done.stderr!r}"
        )
    return done


@contextlib.contextmanager
def tcletd_process(
    args: Sequence[str],
    *,
    stdout: int = subprocess.PIPE,
    stderr: int = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A running ``python -m tcletd ARGS`` in a session of its own, for tests that talk to it or
    signal it; whatever is left of it (the host, its zygote, its workers) is killed by the
    process group's id on the way out. ``stdout``/``stderr``: a PIPE or a descriptor; ``env``:
    added to ours."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcletd", *args],
        stdout=stdout,
        stderr=stderr,
        cwd=ROOT,
        env={**os.environ, **env} if env is not None else None,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def wait_serving(proc: subprocess.Popen[bytes]) -> str:
    """The first line a ``tcletd serve`` process prints, once it serves."""
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert line.startswith("tcletd: serving on "), line
    return line


class TcletRunner:
    """The ``tclet`` fixture: ``tclet(script, *extra, policy=..., origin=..., argv=...)`` writes
    SCRIPT to a file and runs it with ``tcletd run [--policy P] [--origin O] EXTRA FILE -- ARGV``
    in a fresh process."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def __call__(
        self,
        script: str,
        *extra: str,
        policy: str | None = "trusted",
        origin: str | None = None,
        argv: Sequence[str] = (),
        timeout: float = 20.0,
    ) -> Ran:
        path = self.tmp_path / "tclet.tcl"
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
