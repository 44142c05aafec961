"""The penalty box: a site one of whose tclets hogged starts its next tclets demoted, for a while.

A hostile script relaunched in a loop is demoted ~0.1 s into each life; from the box, its next
lives start in the idle class, before any of their threads exist. Other sites are untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tcletd.addresses import Origin
from tcletd.api import Host
from tcletd.host.tclet import Tclet
from tcletd.host.watchdog import PENALTY, PenaltyBox
from tcletd.states import TcletState
from tests.conftest import sched_classes, until

pytestmark = pytest.mark.timeout(60)

HOG_SITE = "http://127.0.0.1:8080"
POLITE = "after 300\nputs done\n"  # sleeps, prints, exits 0


def records(audit: Path, event: str) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in audit.read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


# ---- the box itself --------------------------------------------------------------------------


def test_the_box_holds_a_site_until_seconds_after_its_last_offence() -> None:
    box = PenaltyBox(seconds=10.0)
    assert box.holds("http://a:80", 0.0) == 0.0
    assert box.offend("http://a:80", 0.0) is True  # enters
    assert box.holds("http://a:80", 4.0) == 6.0
    assert box.offend("http://a:80", 5.0) is False  # already in: kept longer
    assert box.holds("http://a:80", 14.0) == 1.0
    assert box.holds("http://b:80", 14.0) == 0.0
    assert box.holds("http://a:80", 15.0) == 0.0
    assert len(box) == 0  # an expired site is forgotten


def test_the_box_forgets_the_least_recent_offender_beyond_its_capacity() -> None:
    box = PenaltyBox(seconds=10.0, capacity=2)
    box.offend("a", 0.0)
    box.offend("b", 1.0)
    box.offend("a", 2.0)  # a is now the most recent
    box.offend("c", 3.0)
    assert len(box) == 2
    assert (box.holds("a", 3.0), box.holds("b", 3.0), box.holds("c", 3.0)) == (9.0, 0.0, 10.0)


def test_a_box_of_zero_seconds_holds_nobody() -> None:
    box = PenaltyBox(seconds=0.0)
    assert box.offend("a", 0.0) is False
    assert box.holds("a", 0.0) == 0.0


def test_a_site_is_scheme_host_and_port() -> None:
    assert Origin.parse("http://Example.COM/a/b/page.tcl?x=1").site == "http://example.com:80"
    assert Origin.parse("https://127.0.0.1:8443/").site == "https://127.0.0.1:8443"
    assert Origin.parse("http://[::1]:81/x").site == "http://[::1]:81"
    assert Origin.parse("file:///home/u/t.tcl").site == "file://"
    assert Origin.parse(None).site == Origin.parse("not a url").site == "UNKNOWN originURL"


def test_a_negative_penalty_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"penalty.*-1"):
        Host(penalty=-1)


# ---- on a real host --------------------------------------------------------------------------


async def _started(tclet: Tclet) -> set[int]:
    """The worker's threads' classes once its script runs (every thread exists by then)."""
    await until(lambda: tclet.state is not TcletState.STARTING)
    assert tclet.worker is not None
    return sched_classes(tclet.worker.pid)


def test_a_hogging_site_starts_its_next_tclets_demoted_and_other_sites_do_not(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[set[int], set[int], list[str], list[object]]:
        out: dict[str, list[bytes]] = {"same": [], "other": []}
        async with Host(audit=audit) as host:
            hog = host.launch(
                "while 1 {incr i}", origin=f"{HOG_SITE}/hog.tcl", policy="trusted", **_quiet()
            )
            await until(lambda: hog.demoted)
            await hog.end("test over")
            await hog.wait()
            # The same site (another page of it), and another site, after the offence.
            same = host.launch(
                POLITE,
                origin=f"{HOG_SITE}/other/page.tcl",
                policy="trusted",
                on_stdout=out["same"].append,
                on_stderr=lambda _b: None,
            )
            other = host.launch(
                POLITE,
                origin="http://127.0.0.1/page.tcl",
                policy="trusted",
                on_stdout=out["other"].append,
                on_stderr=lambda _b: None,
            )
            same_classes, other_classes = await _started(same), await _started(other)
            assert (same.demoted, other.demoted) == (True, False)
            results = [await same.wait(), await other.wait()]
        printed = [b"".join(out["same"]).decode(), b"".join(out["other"]).decode()]
        return same_classes, other_classes, printed, [r.status for r in results]

    same_classes, other_classes, printed, statuses = asyncio.run(scenario())
    assert same_classes == {os.SCHED_IDLE}  # every thread, from the start
    assert other_classes == {os.SCHED_OTHER}
    assert printed == ["done\n", "done\n"] and statuses == [0, 0]  # demoted still does its work
    penalties = records(audit, "penalty")
    assert [(r["site"], r["why"], r["seconds"]) for r in penalties] == [
        (HOG_SITE, "demoted", PENALTY)
    ]
    at_launch = [r for r in records(audit, "demoted") if "origin_penalty" in r]
    assert len(at_launch) == 1 and at_launch[0]["origin"] == f"{HOG_SITE}/other/page.tcl"
    assert 0 < float(at_launch[0]["origin_penalty"]) <= PENALTY  # type: ignore[arg-type]
    assert at_launch[0]["sched"] == "idle"


def test_a_limit_breach_boxes_the_site_though_the_tclet_never_hogged(tmp_path: Path) -> None:
    """A tclet that sleeps between its commands is no hog; reaching its commands limit is an
    offence all the same."""
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[str, bool, bool]:
        async with Host(audit=audit) as host:
            counter = host.launch(
                "while 1 {after 1; incr i}",
                origin=f"{HOG_SITE}/count.tcl",
                policy="trusted",
                limits=["commands=3000"],
                **_quiet(),
            )
            result = await counter.wait()
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", policy="trusted", **_quiet())
            await _started(nxt)
            await nxt.wait()
            return result.reason, counter.demoted, nxt.demoted

    reason, counter_demoted, next_demoted = asyncio.run(scenario())
    assert reason == "commands limit 3000"
    assert (counter_demoted, next_demoted) == (False, True)
    assert [(r["site"], r["why"]) for r in records(audit, "penalty")] == [
        (HOG_SITE, "commands limit 3000")
    ]


def test_with_no_penalty_a_hogging_site_starts_its_next_tclets_as_usual() -> None:
    async def scenario() -> tuple[bool, bool, set[int]]:
        async with Host(penalty=0) as host:
            hog = host.launch("while 1 {incr i}", origin=f"{HOG_SITE}/", **_quiet())
            await until(lambda: hog.demoted)
            await hog.end("test over")
            await hog.wait()
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **_quiet())
            classes = await _started(nxt)
            await nxt.wait()
            return hog.demoted, nxt.demoted, classes

    assert asyncio.run(scenario()) == (True, False, {os.SCHED_OTHER})


def _quiet() -> dict[str, object]:
    return {"on_stdout": lambda _b: None, "on_stderr": lambda _b: None}
