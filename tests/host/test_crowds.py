"""A site's tclets past its first four running at once start in the idle class: the fifth and
sixth of a storm are demoted from their launch (their worker's threads in SCHED_IDLE, audited
with ``site_crowd``), another site's tclet and an operator's own scripts are not, and once the
site's tclets have ended its next one runs at full priority again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from support.audit import audit_records
from support.hosting import quiet
from support.waiting import until

from tcletd.api import Host
from tcletd.host.crowds import CROWD
from tcletd.host.tclet import Tclet
from tcletd.shared.states import TcletState

pytestmark = pytest.mark.timeout(60)

SITE = "http://127.0.0.1:9001/storm.tcl"
OTHER = "http://127.0.0.1:9002/"


def idle_class(tclet: Tclet) -> bool:
    assert tclet.worker is not None and tclet.worker.pid is not None
    return os.sched_getscheduler(tclet.worker.pid) == os.SCHED_IDLE


async def started(host: Host, origin: str | None) -> Tclet:
    tclet = host.launch("after 20000", origin=origin, **quiet())
    await until(lambda: tclet.state is not TcletState.STARTING)
    return tclet


def test_a_sites_crowd_starts_demoted_and_others_do_not(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        async with Host(audit=audit, penalty=0) as host:
            storm = [await started(host, SITE) for _ in range(CROWD + 2)]
            other = await started(host, OTHER)
            own = [await started(host, None) for _ in range(CROWD + 2)]
            assert [idle_class(t) for t in storm] == [False] * CROWD + [True, True]
            assert [t.demoted for t in storm] == [False] * CROWD + [True, True]
            assert not idle_class(other) and not any(idle_class(t) for t in own)
            for tclet in storm:
                await tclet.end("done")
                await tclet.wait()
            again = await started(host, SITE)
            assert not idle_class(again)
            for tclet in [again, other, *own]:
                await tclet.end("done")

    asyncio.run(scenario())
    crowd = [r for r in audit_records(audit, "demoted") if "site_crowd" in r]
    assert [r["site_crowd"] for r in crowd] == [CROWD + 1, CROWD + 2]
    assert all(r["sched"] == "idle" for r in crowd)
