"""``--audit FILE`` records every decision and lifecycle event of a run as JSON lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import POLICIES
from support.audit import audit_records
from support.net import TcpServer, echo_handler
from support.processes import TcletRunner

pytestmark = pytest.mark.timeout(60)


def test_audit_records_decisions_and_lifecycle(tclet: TcletRunner, tmp_path: Path) -> None:
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
    records = audit_records(audit)
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
    home = POLICIES / "home.toml"
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
