"""Limits as a tclet meets them: cpu, memory, wall clock, Tcl commands; statuses and reasons.

Real ``tcletd run`` processes. Each test reads the audit log to measure how long the host took
from the breach (the ``limit`` record) to the end (the ``exit`` record) and prints it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from support.audit import Record, first_records
from support.processes import TcletRunner, tcletd_process

from tcletd.host.watchdog import TICK

pytestmark = pytest.mark.timeout(60)

GRACE = 0.5  # the host's grace between SIGTERM and SIGKILL (Host's default, tcletd run's)


def _timing(records: dict[str, Record], what: str) -> float:
    launch, limit, end = (float(str(records[e]["time"])) for e in ("launch", "limit", "exit"))
    print(f"{what}: breach {limit - launch:.3f} s after launch, end {end - limit:.3f} s later")
    return end - limit


def test_cpu_limit_ends_a_busy_loop(tclet: TcletRunner, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    started = time.monotonic()
    baseline_run = tclet("puts ok", policy="home")  # tcletd's own start and end, here and now
    baseline = time.monotonic() - started
    assert baseline_run.status == 0, baseline_run.stderr
    started = time.monotonic()
    ran = tclet("while 1 {}", "--limit", "cpu=1s", "--audit", str(audit), policy="home")
    elapsed = time.monotonic() - started
    assert ran.status == 137, ran.stderr
    assert ran.stderr.endswith("tcletd: tclet ended: cpu limit 1 s\n")
    records = first_records(audit)
    assert records["limit"]["limit"] == "cpu" and records["limit"]["maximum"] == 1.0
    assert 1.0 <= float(records["limit"]["value"]) < 1.5
    assert (records["exit"]["status"], records["exit"]["reason"]) == (137, "cpu limit 1 s")
    assert _timing(records, "cpu limit 1 s") < 1.0
    # The limit, a tick, the grace at most and a second of slack, past tcletd's own start.
    assert elapsed < baseline + 1 + TICK + GRACE + 1, (elapsed, baseline)


def test_memory_limit_ends_a_memory_bomb(tclet: TcletRunner, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    # A bomb that keeps what it allocates, 1 MB every 10 ms: the host sees RSS pass the limit.
    # (A doubling `string repeat` bomb meets the worker's RLIMIT_AS backstop first, which sets
    # the address space to VmSize + memory: it then fails with Tcl's "out of memory" error.)
    script = (
        "set chunk [string repeat x 1000000]\n"
        'while 1 {lappend keep [string range "$chunk " 0 end]; after 10}\n'
    )
    ran = tclet(script, "--limit", "memory=128MiB", "--audit", str(audit), policy="home")
    assert ran.status == 137, ran.stderr
    assert ran.stderr.endswith("tcletd: tclet ended: memory limit 128 MiB\n")
    records = first_records(audit)
    assert records["limit"]["limit"] == "memory"
    assert int(records["limit"]["value"]) >= 128 * 2**20
    assert records["exit"]["reason"] == "memory limit 128 MiB"
    assert _timing(records, "memory limit 128 MiB") < 1.0


def test_wall_limit_ends_a_sleeping_tclet_with_124(tclet: TcletRunner, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    ran = tclet(
        "puts start; flush stdout; after 20000 {exit 0}",
        "--limit",
        "wall=1s",
        "--audit",
        str(audit),
        policy="home",
    )
    assert ran.status == 124, ran.stderr
    assert ran.stdout == "start\n"
    assert ran.stderr.endswith("tcletd: tclet ended: wall limit 1 s\n")
    records = first_records(audit)
    assert records["limit"]["limit"] == "wall"
    assert 1.0 <= float(records["limit"]["value"]) < 1.3
    assert (records["exit"]["status"], records["exit"]["reason"]) == (124, "wall limit 1 s")
    assert _timing(records, "wall limit 1 s") < 1.0


def test_commands_limit_reason_comes_from_the_worker(tclet: TcletRunner, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    ran = tclet(
        "while 1 {incr i}",
        "--limit",
        "commands=200000",
        "--audit",
        str(audit),
        policy="home",
    )
    assert ran.status == 137, ran.stderr
    assert ran.stderr.endswith("tcletd: tclet ended: commands limit 200000\n")
    records = first_records(audit)
    assert records["limit"]["limit"] == "commands"
    assert records["exit"]["reason"] == "commands limit 200000"
    _timing(records, "commands limit 200000")


def test_a_tclet_within_its_limits_is_left_alone(tclet: TcletRunner) -> None:
    ran = tclet("after 300; puts done", "--limit", "cpu=1s", "--limit", "wall=5s", policy="home")
    assert (ran.status, ran.stdout, ran.stderr) == (0, "done\n", "")


def test_sigterm_to_tcletd_ends_the_tclet_with_143(tmp_path: Path) -> None:
    script = tmp_path / "sleepy.tcl"
    script.write_text("puts ready; flush stdout; after 20000 {exit 0}\n")
    audit = tmp_path / "audit.jsonl"
    with tcletd_process(["run", "--audit", str(audit), str(script)]) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143
    assert err.decode().endswith("tcletd: tclet ended: tcletd got SIGTERM\n")
    records = first_records(audit)
    assert records["kill"]["reason"] == "tcletd got SIGTERM"
    assert (records["exit"]["status"], records["exit"]["reason"]) == (143, "tcletd got SIGTERM")
