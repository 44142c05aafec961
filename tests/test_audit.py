"""``--audit FILE`` records every decision and lifecycle event of a run as JSON lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.netutil import TcpServer, echo_handler

pytestmark = pytest.mark.timeout(60)


def test_audit_records_decisions_and_lifecycle(tclet, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with TcpServer(echo_handler) as echo:
        script = (
            f"close [socket 127.0.0.1 {echo.port}]\n"
            "catch {socket 127.0.0.1 25}\n"
            "catch {socket 127.0.0.1 031}\n"
            "catch {policy trusted}\n"
        )
        ran = tclet(
            script,
            "--audit",
            str(audit),
            policy=None,
            origin=f"http://127.0.0.1:{echo.port}/t.tcl",
        )
    assert ran.status == 0, ran.stderr
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events[0] == "launch" and events[-1] == "exit"
    assert {r["tclet"] for r in records} == {records[0]["tclet"]}
    decisions = [r for r in records if r["event"] == "decision"]
    assert [(d["port"], d["decision"]) for d in decisions] == [
        (str(echo.port), "allowed"),
        ("25", "denied"),
        ("031", "denied"),
    ]
    allowed = decisions[0]
    assert allowed["canonical_host"] == "127.0.0.1"
    assert allowed["addresses"] == ["127.0.0.1"]
    home = Path(__file__).resolve().parent.parent / "policies" / "home.toml"
    line = next(
        n
        for n, text in enumerate(home.read_text().splitlines(), 1)
        if '"$originSocketHost >1024"' in text
    )
    assert allowed["rules"] == [f"{home}:{line}: allow $originSocketHost >1024"]
    assert "non numeric port 031" in decisions[2]["reason"]
    refused = [r for r in records if r["event"] == "policy"]
    assert refused == [
        {**refused[0], "requested": "trusted", "decision": "refused", "why": "master config"}
    ]
    assert records[-1]["status"] == 0


def test_every_event_the_host_writes_is_documented() -> None:
    """docs/audit.md's event table and the events the code writes are the same set: an event
    added without its documentation (or documented and gone) fails here."""
    written: set[str] = set()
    for path in (ROOT / "tcletd").rglob("*.py"):
        # Records are written as self._audit("event", ...), records("event", ...) inside
        # TcletRecords (self("event", ...)) or TcletRecords(...)("event", ...).
        written |= set(re.findall(r'(?:\b_audit|\bself|\))\(\s*"([a-z_]+)"', path.read_text()))
    doc = (ROOT / "docs" / "audit.md").read_text()
    events = doc[doc.index("## Events") : doc.index("Reasons the host gives")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", events, re.MULTILINE))
    assert written == documented
    assert {"launch", "exit", "decision", "penalty"} <= written  # the scan sees the writers
