"""``tcletd run`` started with its standard output closed (``>&-``) behaves as tclsh does: the
worker has no Python-level stdout then, only the host's socketpair on fd 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh to compare with"),
]


def test_a_run_with_stdout_closed_ends_as_tclsh_does(tmp_path: Path) -> None:
    script = tmp_path / "hi.tcl"
    script.write_text("puts hi\nputs stderr there\n")
    tcletd = [sys.executable, "-m", "tcletd", "run", str(script)]
    ours = subprocess.run(
        ["bash", "-c", '"$@" >&-', "bash", *tcletd], capture_output=True, text=True, timeout=30
    )
    theirs = subprocess.run(
        ["bash", "-c", 'tclsh "$1" >&-', "bash", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in ours.stderr, ours.stderr
    assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr)
