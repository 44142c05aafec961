"""``tcletd serve`` with isolation levers taken out, for bench/bench_levers.py. A measuring device
only; never a way to run a host.

    TCLETD_LEVERS_OUT=demotion,crowds python bench/lever_host.py serve --socket PATH ...

Each lever named in ``TCLETD_LEVERS_OUT`` is taken out before the host starts:

- ``demotion``: the worker's ``demote`` does nothing (no idle scheduling class, no lowered
  weight, no CPU kept free), so no worker is ever demoted;
- ``crowds``: a site's tclets past its first four no longer start demoted;
- ``affinity``: no CPU is kept free for tclets that behave: the host, its zygote and demoted
  workers may run on every CPU;
- ``pacing``: control clients are never paced (their allowance never runs out);
- ``realtime``: the host stays in the normal scheduling class (not the real-time one).
"""

from __future__ import annotations

import os
import sys

from tcletd.cli.main import main
from tcletd.host import pacing
from tcletd.host.crowds import SiteCrowds
from tcletd.host.supervisor import WorkerProcess
from tcletd.shared import cpus

LEVERS = ("demotion", "crowds", "affinity", "pacing", "realtime")


def _never(self: WorkerProcess) -> bool:
    return False


def _not_crowded(self: SiteCrowds, origin: object, tclet_id: str) -> int:
    return 0


def _never_due(self: pacing.Allowance, now: float) -> float:
    return 0.0


def take_out(levers: list[str]) -> None:
    for lever in levers:
        if lever not in LEVERS:
            raise SystemExit(f"lever_host: no lever {lever!r} (levers: {', '.join(LEVERS)})")
    if "demotion" in levers:
        WorkerProcess.demote = _never  # type: ignore[method-assign]
    if "crowds" in levers:
        SiteCrowds.join = _not_crowded  # type: ignore[method-assign]
    if "affinity" in levers:
        everywhere = cpus.Placement(cpus.usable(), cpus.usable())
        cpus.placement = lambda: everywhere
    if "pacing" in levers:
        pacing.Allowance.due = _never_due  # type: ignore[method-assign]
    if "realtime" in levers:
        cpus.run_first = lambda: None


if __name__ == "__main__":
    take_out([n for n in os.environ.get("TCLETD_LEVERS_OUT", "").split(",") if n])
    sys.exit(main(sys.argv[1:]))
