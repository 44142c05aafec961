"""The audit records that follow a `limit` record, in order, as docs/audit.md states them.

A limit the host finds is followed by its `kill` (the host ends the tclet) and the `exit`; a
death the host attributes after the fact (the worker's RLIMIT_CPU backstop, here) has no `kill`:
the worker is already dead, so only its `exit` follows. CPU is an offence, so the site's entry
into the penalty box comes right after the `limit` record in both cases.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.audit import audit_records
from support.hosting import quiet

from tcletd.api import Host
from tcletd.host import enforcement
from tcletd.host.watchdog import check_limits

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("host", ["limit", "penalty", "kill", "exit"]),
        ("backstop", ["limit", "penalty", "exit"]),
    ],
)
def test_the_records_after_a_cpu_limit(
    source: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "backstop":
        # Blind the host's CPU check (wall still counts), so the worker's RLIMIT_CPU (soft
        # ceil(cpu) + 1 s: SIGXCPU) is what ends the spinner, whatever the watchdog's timing.
        checked = check_limits

        def no_cpu_check(limits: Any, usage: Any, age: float) -> Any:
            found = checked(limits, usage, age)
            return None if found is not None and found.limit == "cpu" else found

        monkeypatch.setattr(enforcement, "check_limits", no_cpu_check)
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[int, str]:
        async with Host(audit=audit) as host:
            result = await host.run_tclet(
                "while 1 {}", policy="home", limits=["cpu=1s", "wall=20s"], **quiet()
            )
        return result.status, result.reason

    assert asyncio.run(scenario()) == (137, "cpu limit 1 s")
    ending = ("limit", "penalty", "kill", "exit")
    records = [r for r in audit_records(audit) if r["event"] in ending]
    assert [r["event"] for r in records] == expected, records
    assert records[0]["source"] == source
    assert records[-1]["reason"] == "cpu limit 1 s"
    assert records[-1]["status"] == 137
