"""A tclet's ``policy NAME`` under a master config that grants more than home: only shipped
policies by name, and the worker's own limits (descriptor, address-space and CPU rlimits, the
command budget) move with the granted policy. Real host, real workers, real sockets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.audit import Record, audit_records
from support.hosting import run_and_probe
from support.net import TcpServer, echo_handler

from tcletd.policy import load_policy

pytestmark = pytest.mark.timeout(60)

ORIGIN = "http://127.0.0.1:8080/app.tcl"
MASTER = """
[[grant]]
policy = "*"
origins = ["http://127.0.0.1:8080/*"]
"""
# A file a tclet must never be able to load by naming it: it would allow everything.
PERMISSIVE = """
name = "permissive"
[connect]
allow = ["* *"]
"""


def _run(
    tmp_path: Path, script: str, *, policy: str | None = None, probe: bool = False
) -> tuple[int, str, dict[str, tuple[str, str]], list[Record]]:
    """Run ``script`` under a master granting every policy to ORIGIN; its status, stdout, the
    worker's rlimits read once it printed ``ready`` (when ``probe``), and the audit records."""
    master = tmp_path / "master.toml"
    master.write_text(MASTER)
    audit = tmp_path / "audit.jsonl"
    status, out, limits = run_and_probe(
        script, origin=ORIGIN, master=master, audit=audit, policy=policy, probe=probe
    )
    return status, out, limits, audit_records(audit)


def test_a_tclet_can_name_only_shipped_policies_never_a_file(tmp_path: Path) -> None:
    permissive = tmp_path / "permissive.toml"
    permissive.write_text(PERMISSIVE)
    names = [str(permissive), "permissive.toml", "../policies/trusted", "trusted.toml", "Home"]
    script = "".join(f"puts [catch {{policy {{{n}}}}} m]:$m\n" for n in names) + "puts [policy]\n"
    status, out, _, records = _run(tmp_path, script)
    assert status == 0, out
    lines = out.splitlines()
    for name, line in zip(names, lines, strict=False):
        assert line == f'1:permission denied: policy "{name}" not allowed for this origin', line
    assert lines[-1] == "home"
    refused = [r for r in records if r["event"] == "policy"]
    assert [r["why"] for r in refused] == ["unknown policy"] * len(names)
    assert not [r for r in records if r["event"] == "decision"]


def test_the_worker_rlimits_follow_a_granted_policy(tmp_path: Path) -> None:
    trusted = load_policy("trusted")
    _, out, limits, records = _run(
        tmp_path, "policy trusted\nputs ready\nflush stdout\nvwait forever\n", probe=True
    )
    assert "ready" in out
    assert any(r["event"] == "policy" and r["decision"] == "granted" for r in records)
    nofile_soft, nofile_hard = (int(x) for x in limits["nofile"])
    assert trusted.quotas.sockets < nofile_soft <= nofile_hard, limits
    cpu_soft, cpu_hard = (int(x) for x in limits["cpu"])
    assert cpu_soft == int(trusted.limits.cpu) + 1 and cpu_hard == cpu_soft + 1, limits
    as_soft, as_hard = limits["as"]
    assert int(as_soft) > 2 * trusted.limits.memory and int(as_soft) <= int(as_hard), limits


def test_a_granted_policy_lets_the_tclet_use_its_socket_quota(tmp_path: Path) -> None:
    """home allows 8 sockets, trusted 256: after the grant the kernel must not stop the 9th."""
    with TcpServer(echo_handler) as echo:
        script = (
            "policy trusted\nset n 0\n"
            f"for {{set i 0}} {{$i < 20}} {{incr i}} {{"
            f" if {{[catch {{lappend s [socket 127.0.0.1 {echo.port}]}} m]}} {{puts $m; break}};"
            " incr n }\n"
            "puts opened:$n\n"
        )
        status, out, _, _ = _run(tmp_path, script)
    assert (status, out.splitlines()[-1]) == (0, "opened:20"), out


def test_under_a_fixed_policy_the_limits_cannot_be_raised(tmp_path: Path) -> None:
    _, out, limits, _ = _run(
        tmp_path, "puts ready\nflush stdout\nvwait forever\n", policy="home", probe=True
    )
    assert "ready" in out
    assert limits["nofile"][0] == limits["nofile"][1], limits  # soft = hard: nowhere to go
    assert limits["as"][0] == limits["as"][1], limits
