"""A request handler's failure is contained, and a host out of descriptors still holds the line.

Finding 7: with the host's descriptor table full (EMFILE), a tclet's connect was never answered
(the OSError killed the handler's task) and the watchdog, whose psutil reads need descriptors,
stopped ending tclets (a wall=5s tclet ran 17 s). The host of the EMFILE test runs in a process
of its own, with a small RLIMIT_NOFILE, whose table the script then fills.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from support import ROOT
from support.audit import audit_records
from support.net import TcpServer, echo_handler
from support.processes import run_bounded

from tcletd.api import Host
from tcletd.host.audit import AuditLog
from tcletd.host.broker import Broker, start_eagerly
from tcletd.shared.states import EXIT_WALL_LIMIT

pytestmark = pytest.mark.timeout(90)

CONNECTS = """
while 1 {
    if {[catch {socket 127.0.0.1 %d} s]} { puts "refused: $s"; flush stdout; break }
    close $s
    after 20
}
after 100000
"""

# The host's process: starts a wall=2s tclet, a cpu=1s spinner and a connecting one; once they
# run, floods its own table (taking every descriptor it frees), and reports what became of them.
OUT_OF_FDS = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys, time
    from tcletd.api import Host

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    audit, connects = sys.argv[1], sys.argv[2]
    RUNNING = ("script", "idle", "busy")

    async def main() -> None:
        said = bytearray()
        drop = lambda data: None
        async with Host(audit=audit, grace=0.5) as host:
            walled = host.launch(
                "while 1 { after 50 }", policy="trusted", limits=["wall=2s"],
                on_stdout=drop, on_stderr=drop,
            )
            spinner = host.launch(
                "while 1 {}", policy="trusted", limits=["cpu=1s"],
                on_stdout=drop, on_stderr=drop,
            )
            connector = host.launch(
                connects, policy="trusted", on_stdout=said.extend, on_stderr=drop
            )
            while not all(t.state.value in RUNNING for t in (walled, spinner, connector)):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # a few connects go through first
            filler = []

            def fill() -> None:  # a flood: every descriptor the host frees is taken at once
                try:
                    while True:
                        filler.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    pass

            async def flood() -> None:
                while True:
                    fill()
                    await asyncio.sleep(0.002)

            fill()
            flooding = asyncio.get_running_loop().create_task(flood())
            full_at = time.monotonic()
            result = await asyncio.wait_for(walled.wait(), 20)
            ended_after = time.monotonic() - full_at
            spun = await asyncio.wait_for(spinner.wait(), 20)
            deadline = time.monotonic() + 10
            while b"refused" not in said and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            flooding.cancel()
            full = len(filler)
            for fd in filler:
                os.close(fd)
        print(json.dumps({
            "status": result.status, "reason": result.reason, "ended_after": ended_after,
            "said": said.decode(), "filled": full, "cpu": spun.reason,
        }))

    asyncio.run(main())
    """
)


def test_out_of_descriptors_limits_hold_and_requests_are_answered(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with TcpServer(echo_handler) as server:
        done = run_bounded(
            [sys.executable, "-c", OUT_OF_FDS, str(audit), CONNECTS % server.port],
            timeout=60,
            cwd=ROOT,
        )
    assert not done.timed_out and done.status == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["filled"] > 0, report
    # The wall limit fired while the table was full (the old host never ended it).
    assert report["status"] == EXIT_WALL_LIMIT, report
    assert report["reason"] == "wall limit 2 s", report
    # The connect made while the table was full got its Tcl error, not silence.
    assert "refused: couldn't open socket: too many open files" in report["said"], report
    # The audit log kept its records: the limit, the failed request, both ends.
    # The CPU limit was measured through the reserve: the host ended the spinner, not the
    # kernel's backstop (which a host that could not read /proc leaves it to).
    assert report["cpu"] == "cpu limit 1 s", report
    limits = {r["limit"]: r["source"] for r in audit_records(audit, "limit")}
    assert limits == {"wall": "host", "cpu": "host"}, limits
    errors = audit_records(audit, "error")
    assert errors and errors[0]["request"] == "connect", errors
    assert "Too many open files" in errors[0]["error"], errors
    assert len(audit_records(audit, "exit")) == 3


def _run_one(script: str, audit: Path) -> tuple[int, str]:
    """Run ``script`` on an in-process host; its status and stdout."""
    said = bytearray()

    async def scenario() -> int:
        async with Host(audit=audit) as host:
            tclet = host.launch(script, policy="trusted", on_stdout=said.extend)
            return (await tclet.wait()).status

    return asyncio.run(scenario()), said.decode()


def test_a_handler_bug_is_an_error_reply_and_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the broker")

    monkeypatch.setattr(Broker, "connect", broken)
    audit = tmp_path / "audit.jsonl"
    script = (
        "catch {socket 127.0.0.1 9} err; puts $err\n"
        "catch {socket 127.0.0.1 9} err; puts $err\n"  # the one-in-flight flag was cleared
    )
    status, said = _run_one(script, audit)
    assert status == 0
    assert said == "internal host error\n" * 2
    errors = audit_records(audit, "error")
    assert [r["request"] for r in errors] == ["connect", "connect"], errors
    assert "a bug in the broker" in errors[0]["error"]


def test_a_handler_that_fails_after_suspending_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(0.05)  # the rest runs in a task of its own
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(Broker, "connect", broken)
    audit = tmp_path / "audit.jsonl"
    status, said = _run_one("catch {socket 127.0.0.1 9} err; puts $err", audit)
    assert status == 0
    assert said == "couldn't open socket: too many open files\n"
    assert [r["request"] for r in audit_records(audit, "error")] == ["connect"]


def test_an_audit_log_that_cannot_be_written_costs_no_enforcement() -> None:
    log = AuditLog("/dev/full")  # every write: ENOSPC
    try:
        log.record("limit", limit="wall")
        log.record("exit", status=124)
    finally:
        log.close()
    assert log.lost == 2


def test_start_eagerly_reports_a_failure_after_suspension_at_once() -> None:
    seen: list[dict[str, object]] = []

    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("after its first suspension")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        task = start_eagerly(loop, fails())
        assert task is not None
        await asyncio.wait([task])
        await asyncio.sleep(0)  # the done callback runs

    asyncio.run(scenario())
    assert [c["message"] for c in seen] == ["request handler failed"], seen
    assert str(seen[0]["exception"]) == "after its first suspension"
