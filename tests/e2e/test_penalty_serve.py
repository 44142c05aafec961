"""A resident host's penalty box (``tcletd serve``): a client from a boxed site is refused with
a temporary failure; ``--penalty`` is a strict duration, and 0 turns the box off."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.processes import run_tcletd, tcletd_process, wait_serving

pytestmark = pytest.mark.timeout(60)

HOG_SITE = "http://127.0.0.1:8080"


def test_a_resident_host_client_from_a_boxed_site_gets_a_temporary_failure(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "control.sock"
    origin = f"{HOG_SITE}/t.tcl"
    with tcletd_process(["serve", "--socket", str(sock)]) as server:
        wait_serving(server)
        run = ["run", "--host", str(sock), "--origin", origin]
        hog = run_tcletd([*run, "--limit", "cpu=0.3s", "-"], stdin="while 1 {incr i}")
        assert hog.status == 137 and "cpu limit" in hog.stderr, hog
        boxed = run_tcletd([*run, "-"], stdin="puts once")
        again = run_tcletd([*run, "-"], stdin="puts never")
    assert (boxed.status, boxed.stdout) == (0, "once\n")
    assert again.status == 75 and again.stdout == "", again
    assert again.stderr.startswith(
        f"tcletd: too many tclets from {HOG_SITE} while it is in the penalty box"
    ), again


def test_serve_takes_the_penalty_as_a_strict_duration(tmp_path: Path) -> None:
    bad = run_tcletd(["serve", "--socket", str(tmp_path / "s"), "--penalty", "-5"])
    assert bad.status == 2
    assert "argument --penalty: expected a duration like 10s" in bad.stderr, bad
    sock = tmp_path / "control.sock"
    with tcletd_process(["serve", "--socket", str(sock), "--penalty", "0"]) as server:
        wait_serving(server)
        run = ["run", "--host", str(sock), "--origin", f"{HOG_SITE}/t.tcl"]
        hog = run_tcletd([*run, "--limit", "cpu=0.3s", "-"], stdin="while 1 {incr i}")
        ran = [run_tcletd([*run, "-"], stdin="puts ok") for _ in range(2)]
    assert hog.status == 137, hog
    assert [(r.status, r.stdout) for r in ran] == [(0, "ok\n"), (0, "ok\n")]
