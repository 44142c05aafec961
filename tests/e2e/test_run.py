"""``tcletd run`` end to end: a real host, a real worker, real Tcl; statuses and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import EXAMPLES
from support.processes import TcletRunner, run_tcletd

pytestmark = pytest.mark.timeout(60)


def test_hello_world_prints_and_exits_zero(tclet: TcletRunner) -> None:
    ran = tclet('puts "hello, world"; puts stderr oops')
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "hello, world\n"
    assert ran.stderr == "oops\n"


def test_exit_code_is_the_tclets(tclet: TcletRunner) -> None:
    ran = tclet("puts before; exit 7; puts after")
    assert ran.status == 7
    assert ran.stdout == "before\n"


def test_output_order_and_flush_on_exit(tclet: TcletRunner) -> None:
    script = (
        "fconfigure stdout -buffering full\nfor {set i 0} {$i < 2000} {incr i} {puts $i}\nexit 0"
    )
    ran = tclet(script)
    assert ran.status == 0
    assert ran.stdout.split() == [str(i) for i in range(2000)]


def test_argv_argc_argv0_embed_args(tclet: TcletRunner, tmp_path: Path) -> None:
    script = (
        "puts [list $argc $argv [file tail $argv0]]\n"
        "puts [lsort [array names embed_args]]\n"
        "puts $embed_args(color)\n"
    )
    ran = tclet(script, "--arg", "Color=blue", "--arg", "size=3", argv=["a b", "c"])
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines() == ["2 {{a b} c} tclet.tcl", "color size", "blue"]


def test_uncaught_error_is_status_1_with_errorinfo(tclet: TcletRunner) -> None:
    ran = tclet("proc f {} {error boom}\nf\n")
    assert ran.status == 1
    assert "boom" in ran.stderr
    assert 'invoked from within\n"f"' in ran.stderr


def test_syntax_error_is_status_1(tclet: TcletRunner) -> None:
    ran = tclet('puts "unterminated\n')
    assert ran.status == 1
    assert "missing" in ran.stderr


def test_missing_script_is_66() -> None:
    ran = run_tcletd(["run", "/nonexistent/tclet.tcl"])
    assert ran.status == 66
    assert "/nonexistent/tclet.tcl" in ran.stderr


def test_unknown_policy_is_2_and_lists_known(tclet: TcletRunner) -> None:
    ran = tclet("puts hi", policy="nosuch")
    assert ran.status == 2
    assert "nosuch" in ran.stderr
    for name in ("home", "inside", "outside", "trusted"):
        assert name in ran.stderr


def test_script_from_stdin() -> None:
    ran = run_tcletd(["run", "--policy", "trusted", "-"], stdin="puts [expr {6*7}]\n")
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "42\n"


def test_implicit_wait_runs_after_events(tclet: TcletRunner) -> None:
    ran = tclet("after 200 {puts fired; set ::n 1}\nputs scheduled\n")
    assert ran.status == 0, ran.stderr
    assert ran.stdout == "scheduled\nfired\n"


def test_background_error_reaches_stderr(tclet: TcletRunner) -> None:
    ran = tclet("after 10 {error {in the background}}\nafter 100 {puts done}\n")
    assert ran.status == 0
    assert "in the background" in ran.stderr
    assert ran.stdout == "done\n"


def test_disallowed_policy_request_is_a_tcl_error_and_tclet_goes_on(tclet: TcletRunner) -> None:
    script = "puts [catch {policy trusted} msg]\nputs $msg\nputs [policy]\nputs still-running\n"
    ran = tclet(script, policy=None)
    assert ran.status == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "1"
    assert "trusted" in lines[1]
    assert lines[2] == "home"
    assert lines[3] == "still-running"


def test_operator_policy_cannot_be_changed_by_tclet(tclet: TcletRunner) -> None:
    ran = tclet("puts [catch {policy home} msg]; puts $msg", policy="trusted")
    assert ran.stdout.splitlines() == ["1", 'security policy "trusted" already loaded']


def test_example_hello_runs_from_readme() -> None:
    ran = run_tcletd(["run", str(EXAMPLES / "hello.tcl")])
    assert ran.status == 0, ran.stderr
    assert ran.stdout.strip()


def test_doctor_reports_tcl_channels_and_sandbox() -> None:
    ran = run_tcletd(["doctor"])
    assert ran.status == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("tcletd ")
    assert any(line.startswith("Tcl 8.") for line in lines)
    assert any(line.startswith("channels: native Tcl sockets") for line in lines)
    assert "sandbox: kernel core: soft=0 hard=0" in lines
    assert "sandbox: kernel fsize: soft=0 hard=0" in lines
