"""``nohup tcletd run --host ...``: a signal the client was started with ignored stays ignored,
so a hang-up does not end the tclet (the client passes on only the signals it takes); and an
embedded ``tcletd run`` started with SIGINT ignored (a background job of a script) keeps it
ignored, as tclsh does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT
from support.wire import serving

pytestmark = pytest.mark.timeout(60)

SCRIPT = "puts ready; flush stdout; after 1500; puts done\n"


def _client(
    sock: Path | None, script: Path, ignored: bool, signum: int = signal.SIGHUP
) -> subprocess.Popen[bytes]:
    def ignore_hangups() -> None:  # nohup's doing (or a shell's for a background job)
        signal.signal(signum, signal.SIG_IGN)

    where = ["--host", str(sock)] if sock is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "tcletd", "run", *where, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=ignore_hangups if ignored else None,
    )


def _signalled(sock: Path | None, script: Path, ignored: bool, signum: int) -> tuple[int, bytes]:
    """Start the client with ``signum`` ignored or not, send it ``signum`` once its tclet runs;
    its status and the rest of its output. It is killed by its group's id if still there."""
    client = _client(sock, script, ignored, signum)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"ready\n"
        os.kill(client.pid, signum)
        rest, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            client.wait(timeout=10)
    assert client.returncode is not None, err.decode()
    return client.returncode, rest


@pytest.mark.parametrize(("ignored", "status", "out"), [(True, 0, b"done\n"), (False, 129, b"")])
def test_a_hangup_ignored_at_start_stays_ignored(
    tmp_path: Path, ignored: bool, status: int, out: bytes
) -> None:
    """Ignored at start: the tclet runs on to its end. Not ignored: the hang-up ends it, as
    under an embedded host (so the test sees the signal arrive while the tclet runs)."""
    sock = tmp_path / "control.sock"
    script = tmp_path / "slow.tcl"
    script.write_text(SCRIPT)
    with serving(sock):
        assert _signalled(sock, script, ignored, signal.SIGHUP) == (status, out)


@pytest.mark.parametrize(("ignored", "status", "out"), [(True, 0, b"done\n"), (False, 130, b"")])
def test_an_embedded_run_keeps_an_ignored_interrupt_ignored(
    tmp_path: Path, ignored: bool, status: int, out: bytes
) -> None:
    script = tmp_path / "slow.tcl"
    script.write_text(SCRIPT)
    assert _signalled(None, script, ignored, signal.SIGINT) == (status, out)
