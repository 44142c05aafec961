"""The command budget through ``tcletd run``: one budget for the tclet's whole interpreter tree.

Real ``tcletd run`` processes; the worker enforces the budget and reports it, the host ends the
tclet, audits a ``limit`` record and exits 137. Finding 3: 20 child interpreters created first,
then each running ``time {f} 90000``, ran 1.8 million commands under ``--limit
commands=100000`` (each interpreter could spend all the tree had left at the last count).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.audit import audit_records
from support.processes import TcletRunner

pytestmark = pytest.mark.timeout(60)

FINDING_3 = """
set cs {}
for {set k 0} {$k < 20} {incr k} {lappend cs [interp create]}
foreach c $cs {interp share {} stdout $c}
foreach c $cs {$c eval {proc f {} {}; time {f} 90000; puts -nonewline X; flush stdout}}
puts done
"""


def test_twenty_children_share_one_budget(tclet: TcletRunner, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    ran = tclet(FINDING_3, "--limit", "commands=100000", "--audit", str(audit), policy="home")
    assert ran.status == 137, (ran.stdout, ran.stderr)
    assert ran.stdout == "X"  # one child's 90,000 fit in the budget, no second one's
    assert ran.stderr.endswith("tcletd: tclet ended: commands limit 100000\n"), ran.stderr
    limits = audit_records(audit, "limit")
    assert [(r["limit"], r["maximum"], r["reason"]) for r in limits] == [
        ("commands", 100000, "commands limit 100000")
    ]
    (end,) = audit_records(audit, "exit")
    assert (end["status"], end["reason"]) == (137, "commands limit 100000")


def test_within_the_budget_the_tree_runs_to_the_end(tclet: TcletRunner) -> None:
    """The same tree on a budget it fits in (20 x 90,000 and change) is left alone."""
    ran = tclet(FINDING_3, "--limit", "commands=1900000", policy="home")
    assert (ran.status, ran.stdout, ran.stderr) == (0, "X" * 20 + "done\n", "")
