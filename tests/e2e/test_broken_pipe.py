"""A ``tcletd`` command whose stdout reader goes away (``tcletd doctor | head -1``) ends quietly:
status 141 (or 0 when it had written everything before), no traceback, nothing on stderr."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from support import EXAMPLES
from support.processes import run_tcletd, tcletd_process
from support.wire import serving

from tcletd.shared.errors import EXIT_BROKEN_PIPE

pytestmark = pytest.mark.timeout(60)

COMMANDS = [
    pytest.param(["version"], id="version"),
    pytest.param(["doctor"], id="doctor"),
    pytest.param(["policy", "check", "--policy", "home", "127.0.0.1", "80"], id="policy-check"),
]


def tcletd_into(
    stdout: int, args: Sequence[str]
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``python -m tcletd ARGS`` writing to ``stdout`` (unbuffered, so that each line is its own
    write), in a session of its own, killed by its group's id if still there."""
    return tcletd_process(args, stdout=stdout, env={"PYTHONUNBUFFERED": "1"})


def _readerless(kind: str) -> int:
    """The writing end of a pipe (or a socket pair) whose reading end is closed."""
    if kind == "pipe":
        read_end, write_end = os.pipe()
        os.close(read_end)
        return write_end
    ours, theirs = socket.socketpair()
    ours.close()
    return theirs.detach()


def _into_readerless(kind: str, args: Sequence[str]) -> tuple[int, bytes]:
    """``tcletd ARGS`` with its stdout a ``kind`` whose reader is gone: its status and stderr."""
    write_end = _readerless(kind)
    try:
        with tcletd_into(write_end, args) as proc:
            os.close(write_end)
            write_end = -1
            assert proc.stderr is not None
            err = proc.stderr.read()
            status = proc.wait(timeout=40)
    finally:
        if write_end >= 0:
            os.close(write_end)
    return status, err


@pytest.mark.parametrize("kind", ["pipe", "socket"])
@pytest.mark.parametrize("args", COMMANDS)
def test_a_reader_gone_before_the_first_line_is_status_141_and_silence(
    args: list[str], kind: str
) -> None:
    """Deterministic: the pipe has no reader left when the command first writes."""
    assert _into_readerless(kind, args) == (EXIT_BROKEN_PIPE, b"")


@pytest.mark.parametrize("args", COMMANDS)
def test_a_reader_that_closes_after_one_line_leaves_no_traceback(args: list[str]) -> None:
    """``| head -1``: whether the rest was written before the close (0, or the command's own
    status) or not (141), stderr stays empty."""
    with tcletd_into(subprocess.PIPE, args) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        status = proc.wait(timeout=40)
    assert first.startswith((b"tcletd ", b"DENIED", b"ALLOWED")), first
    assert err == b"", err.decode()
    assert status in (0, 1, EXIT_BROKEN_PIPE)  # policy check: 1 is "denied"


def test_a_resident_hosts_clients_end_quietly_too(tmp_path: Path) -> None:
    """``tcletd events | head -1`` and friends: the client's own output is what broke."""
    sock = tmp_path / "control.sock"
    with serving(sock):
        ran = run_tcletd(["launch", "--host", str(sock), str(EXAMPLES / "hello.tcl")])
        assert ran.status == 0, ran
        tclet = ran.stdout.strip()
        assert run_tcletd(["wait", "--host", str(sock), tclet]).status == 0
        for args in (["events"], ["ps", "--all"], ["logs", tclet]):
            status, err = _into_readerless("pipe", [*args, "--host", str(sock)])
            assert (status, err) == (EXIT_BROKEN_PIPE, b""), (args, err.decode())
