"""The control plane's audit records are rate-limited per action: a window's first records are
written, the rest counted into one summary when the window ends (a real audit file, a clock the
test moves)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.audit import audit_records

from tcletd.host.audit import AuditLog
from tcletd.host.control_audit import ControlAudit

CLIENT = {"pid": 1, "uid": 2}


def test_past_the_rate_the_records_become_one_summary_per_window(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    now = [100.0]

    async def scenario() -> None:
        audit = ControlAudit(lambda: log, per_window=3, clock=lambda: now[0])
        for _ in range(50):
            audit("evicted", CLIENT, "evicted: idle while the host was full")
        audit("deadline", CLIENT, "idle: no request in 30 s")  # its own window
        now[0] += 1.5  # the next window: the summary of the last one goes first
        audit("evicted", CLIENT, "evicted: idle while the host was full")
        for _ in range(4):
            audit("evicted", {}, "evicted: idle while the host was full")
        audit.flush()

    asyncio.run(scenario())
    log.close()
    records = audit_records(path, "control")
    shape = [(r["action"], r["client"], r.get("suppressed")) for r in records]
    assert shape == [
        *[("evicted", CLIENT, None)] * 3,
        ("deadline", CLIENT, None),
        ("evicted", None, 47),
        ("evicted", CLIENT, None),
        ("evicted", None, None),
        ("evicted", None, None),
        ("evicted", None, 2),
    ]
    assert records[4]["detail"] == "47 more not recorded (at most 3 a second)"


def test_a_summary_is_written_when_its_window_ends_without_more(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    async def scenario() -> None:
        audit = ControlAudit(lambda: log, per_window=1)
        for _ in range(5):
            audit("refused", CLIENT, "refused")
        await asyncio.sleep(1.3)  # the window's timer writes the summary

    asyncio.run(scenario())
    log.close()
    assert [r.get("suppressed") for r in audit_records(path, "control")] == [None, 4]


def test_no_audit_log_means_no_records_and_no_timers() -> None:
    async def scenario() -> None:
        audit = ControlAudit(lambda: None, per_window=1)
        for _ in range(5):
            audit("refused", CLIENT, "refused")
        audit.flush()

    asyncio.run(scenario())
