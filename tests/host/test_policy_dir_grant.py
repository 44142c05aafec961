"""A tclet's ``policy NAME`` on a host with the operator's policy directory (``--policy-dir``):
the operator's policies are grantable by name as the shipped ones are, only where the master
config grants them, and the worker's hard limits leave room for them. Real host, real workers,
real sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.audit import Record, audit_records
from support.hosting import run_and_probe
from support.net import TcpServer, echo_handler

pytestmark = pytest.mark.timeout(60)

GRANTED = "http://127.0.0.1:8080/app.tcl"
OTHER = "http://127.0.0.1:9090/app.tcl"
MASTER = """
[[grant]]
policy = "wide"
origins = ["http://127.0.0.1:8080/*"]
"""
# An operator's policy, not a shipped one: 40 sockets (home allows 8), a 30 min CPU limit.
WIDE = """
description = "the operator's: loopback only, more sockets"
[connect]
allow = ["127.0.0.1 *"]
[quotas]
sockets = 40
connects_per_second = 100
[limits]
cpu = "30m"
"""


def _run(
    tmp_path: Path, script: str, origin: str, *, probe: bool = False
) -> tuple[int, str, dict[str, tuple[str, str]], list[Record]]:
    """Run ``script`` from ``origin`` on a host with the operator's ``wide`` policy; its status,
    stdout, the worker's rlimits once it printed ``ready`` (when ``probe``), the audit."""
    master = tmp_path / "master.toml"
    master.write_text(MASTER)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "wide.toml").write_text(WIDE)
    audit = tmp_path / "audit.jsonl"
    status, out, limits = run_and_probe(
        script, origin=origin, master=master, audit=audit, policy_dir=policies, probe=probe
    )
    return status, out, limits, audit_records(audit)


def test_a_granted_origin_gets_the_operators_policy_and_its_quotas(tmp_path: Path) -> None:
    with TcpServer(echo_handler) as echo:
        script = (
            "policy wide\nputs policy:[policy]\nset n 0\n"
            f"for {{set i 0}} {{$i < 30}} {{incr i}} {{"
            f" if {{[catch {{lappend s [socket 127.0.0.1 {echo.port}]}} m]}} {{puts $m; break}};"
            " incr n }\n"
            "puts opened:$n\n"
        )
        status, out, _, records = _run(tmp_path, script, GRANTED)
    lines = out.splitlines()
    assert (status, lines[0], lines[-1]) == (0, "policy:wide", "opened:30"), out
    grants = [r for r in records if r["event"] == "policy"]
    assert [(r["requested"], r["decision"]) for r in grants] == [("wide", "granted")]


def test_the_ceilings_leave_room_for_the_operators_policy(tmp_path: Path) -> None:
    _, out, limits, _ = _run(
        tmp_path, "puts ready\nflush stdout\nvwait forever\n", GRANTED, probe=True
    )
    assert "ready" in out
    nofile_soft, nofile_hard = (int(x) for x in limits["nofile"])
    assert nofile_soft < nofile_hard and nofile_hard > 40, limits  # home's 8, room for 40
    assert int(limits["cpu"][1]) > 30 * 60, limits  # the hard CPU limit allows wide's 30 min


def test_an_origin_the_master_config_does_not_grant_is_refused(tmp_path: Path) -> None:
    status, out, _, records = _run(
        tmp_path, "puts [catch {policy wide} m]:$m\nputs [policy]\n", OTHER
    )
    assert status == 0, out
    assert out.splitlines() == [
        '1:permission denied: policy "wide" not allowed for this origin',
        "home",
    ]
    refused = [r for r in records if r["event"] == "policy"]
    assert [(r["requested"], r["decision"], r["why"]) for r in refused] == [
        ("wide", "refused", "master config")
    ]
