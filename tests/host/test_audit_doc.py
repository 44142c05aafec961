"""docs/audit.md documents each event's fields as the code writes them: for every event, the
fields in its table are the fields its real records carry (provoked here on an in-process host
with an audit file), or, for the events no cheap tclet provokes (a protocol violation, a failed
request), the keywords of the code's record calls. The event names alone are checked by
tests/unit/test_audit_events.py."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path

import pytest
from support import ROOT
from support.audit import Record, audit_records
from support.hosting import quiet
from support.waiting import until

from tcletd.api import Host
from tcletd.host.audit import AuditLog
from tcletd.host.control_audit import ControlAudit
from tcletd.host.crowds import CROWD
from tcletd.host.watchdog import PenaltyHeld

pytestmark = pytest.mark.timeout(90)

DOC = ROOT / "docs" / "audit.md"
COMMON = {"time", "event", "tclet", "origin", "policy"}
# Events no cheap tclet provokes: their fields are read from the code's record calls.
FROM_CODE = {"violation", "error"}


def documented() -> dict[str, set[str]]:
    """Each event's fields, from its section's table in docs/audit.md."""
    text = DOC.read_text()
    events = text[text.index("## Events") : text.index("Reasons the host gives")]
    sections = re.split(r"^### `([a-z_]+)`$", events, flags=re.MULTILINE)[1:]
    fields = {}
    for event, body in zip(sections[::2], sections[1::2], strict=True):
        fields[event] = set(re.findall(r"^\| `([a-z_]+)` \|", body, re.MULTILINE))
    return fields


def written_by_code(event: str) -> set[str]:
    """The keywords of every record call for ``event`` in the package (``x("event", k=...)``)."""
    fields: set[str] = set()
    for path in (ROOT / "tcletd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == event
            ):
                fields |= {k.arg for k in node.keywords if k.arg is not None}
    return fields


async def _provoke(host: Host, tmp_path: Path) -> None:
    """One tclet (or launch) per record form; they run side by side."""
    site = "http://127.0.0.1:8081/flood.tcl"
    spin = "set e [expr {[clock milliseconds] + 1500}]; while {[clock milliseconds] < $e} {}"
    tclets = [
        # launch with its client; decision denied; policy refused
        host.launch(
            "catch {socket 127.0.0.1 25}; catch {policy trusted}",
            policy=None,
            origin="http://127.0.0.1:8080/t.tcl",
            client={"pid": 4242, "uid": 0},
            **quiet(),
        ),
        # quota refused (a second server past sockets=1)
        host.launch(
            "set s [socket -server x -myaddr 127.0.0.1 0]\n"
            "catch {socket -server y -myaddr 127.0.0.1 0}; close $s",
            policy="trusted",
            limits=["sockets=1"],
            **quiet(),
        ),
        # limit (the worker's commands limit), kill, penalty
        host.launch("while 1 {incr i}", policy="home", limits=["commands=2000"], **quiet()),
        # demoted for its CPU share
        host.launch(spin, policy="home", limits=["cpu=5s"], **quiet()),
        # demoted for its output, then ended at its output quota: quota ended, penalty
        host.launch(
            "while 1 {puts [string repeat x 65536]}",
            policy="home",
            origin=site,
            limits=["output_bytes=4MiB"],
            **quiet(),
        ),
    ]
    results = [await asyncio.wait_for(t.wait(), 30) for t in tclets]
    assert [r.status for r in results] == [0, 0, 137, 0, 137], results
    # The flood's site is in the penalty box: its next tclet starts demoted (origin_penalty),
    # and a launch right after that one is refused (quota, site_launches).
    boxed = host.launch("", policy="home", origin=site, **quiet())
    with pytest.raises(PenaltyHeld):
        host.launch("", policy="home", origin=site, **quiet())
    assert (await asyncio.wait_for(boxed.wait(), 30)).status == 0
    # A crowd: a site's tclets past its first CROWD running at once start demoted (site_crowd).
    crowd = [
        host.launch("after 300", policy="home", origin="http://127.0.0.1:8082/", **quiet())
        for _ in range(CROWD + 1)
    ]
    for tclet in crowd:
        assert (await asyncio.wait_for(tclet.wait(), 30)).status == 0
    # Control records, summary included: a ControlAudit of one record a second, on a log.
    log = AuditLog(tmp_path / "control.jsonl")
    control = ControlAudit(lambda: log, per_window=1)
    control("evicted", {"pid": 1, "uid": 0}, "evicted: idle while the host was full")
    control("evicted", {"pid": 2, "uid": 0}, "evicted: idle while the host was full")
    control.flush()
    log.close()


def real_fields(tmp_path: Path) -> dict[str, set[str]]:
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        async with Host(audit=audit) as host:
            await _provoke(host, tmp_path)
            await until(lambda: not host.status(), 10, message="tclets still running")

    asyncio.run(scenario())
    fields: dict[str, set[str]] = {}
    records: list[Record] = audit_records(audit) + audit_records(tmp_path / "control.jsonl")
    for record in records:
        fields.setdefault(record["event"], set()).update(record.keys() - COMMON)
    return fields


def test_each_events_documented_fields_are_the_fields_written(tmp_path: Path) -> None:
    doc = documented()
    real = real_fields(tmp_path)
    assert set(doc) == set(real) | FROM_CODE, "events provoked here and events documented differ"
    for event, fields in doc.items():
        written = written_by_code(event) if event in FROM_CODE else real[event]
        assert fields == written, f"{event}: documented {sorted(fields)}, written {sorted(written)}"
    assert {"suppressed"} <= real["control"] and {"client"} <= real["launch"]


def test_the_example_records_carry_only_documented_fields() -> None:
    doc = documented()
    text = DOC.read_text()
    example = text[text.index("```json") + len("```json") : text.rindex("```")]
    records = [json.loads(line) for line in example.strip().splitlines()]
    assert records
    for record in records:
        extra = record.keys() - COMMON
        assert extra <= doc[record["event"]], record
