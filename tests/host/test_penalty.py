"""The penalty box: a site one of whose tclets hogged starts its next tclets demoted, and at
most one a second, for a while.

A hostile script relaunched in a loop is demoted ~0.1 s into each life; from the box, its next
lives start in the idle class, before any of their threads exist, and its relaunches are
throttled like a supervisor's crash loop. Other sites are untouched. On a real in-process
Host; the box itself is tested in unit/test_penalty_box.py, a resident host's box in
e2e/test_penalty_serve.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from support.audit import audit_records
from support.hosting import quiet, worker_pid
from support.system import sched_classes
from support.waiting import until

from tcletd.api import Host
from tcletd.host.tclet import Tclet
from tcletd.host.watchdog import PENALTY, PENALTY_LAUNCH, PenaltyHeld
from tcletd.shared.states import TcletState

pytestmark = pytest.mark.timeout(60)

HOG_SITE = "http://127.0.0.1:8080"
POLITE = "after 300\nputs done\n"  # sleeps, prints, exits 0


async def _started(tclet: Tclet) -> set[int]:
    """The worker's threads' classes once its script runs (every thread exists by then)."""
    await until(lambda: tclet.state is not TcletState.STARTING)
    assert tclet.worker is not None
    return sched_classes(worker_pid(tclet))


async def _hog_to_its_cpu_limit(host: Host) -> str:
    """An offence: a busy loop from HOG_SITE, ended by the host at a CPU limit of 0.3 s."""
    hog = host.launch(
        "while 1 {incr i}", origin=f"{HOG_SITE}/hog.tcl", limits=["cpu=0.3s"], **quiet()
    )
    return (await hog.wait()).reason


def test_a_site_ended_at_a_limit_starts_its_next_tclets_demoted_and_other_sites_do_not(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[set[int], set[int], list[str], list[object]]:
        out: dict[str, list[bytes]] = {"same": [], "other": []}
        async with Host(audit=audit) as host:
            assert await _hog_to_its_cpu_limit(host) == "cpu limit 0.3 s"
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
    penalties = audit_records(audit, "penalty")
    assert [(r["site"], r["why"], r["seconds"]) for r in penalties] == [
        (HOG_SITE, "cpu limit 0.3 s", PENALTY)
    ]
    at_launch = [r for r in audit_records(audit, "demoted") if "origin_penalty" in r]
    assert len(at_launch) == 1 and at_launch[0]["origin"] == f"{HOG_SITE}/other/page.tcl"
    assert 0 < float(at_launch[0]["origin_penalty"]) <= PENALTY
    assert at_launch[0]["sched"] == "idle"


@pytest.mark.parametrize(
    ("script", "limit", "reason"),
    [
        ("while 1 {after 1; incr i}", "commands=3000", "commands limit 3000"),
        (
            "while 1 {puts [string repeat x 999]; after 1}",
            "output_bytes=64KiB",
            "output quota 64 KiB",
        ),
    ],
)
def test_an_end_at_a_limit_boxes_the_site_though_the_tclet_never_hogged(
    tmp_path: Path, script: str, limit: str, reason: str
) -> None:
    """A tclet that sleeps between its commands is no hog; being ended at its commands limit
    or its output quota is an offence all the same."""
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[str, bool, bool]:
        async with Host(audit=audit) as host:
            spender = host.launch(script, origin=f"{HOG_SITE}/spend.tcl", limits=[limit], **quiet())
            result = await spender.wait()
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **quiet())
            await _started(nxt)
            await nxt.wait()
            return result.reason, spender.demoted, nxt.demoted

    ended, spender_demoted, next_demoted = asyncio.run(scenario())
    assert ended == reason
    assert (spender_demoted, next_demoted) == (False, True)
    assert [(r["site"], r["why"]) for r in audit_records(audit, "penalty")] == [(HOG_SITE, reason)]


def test_a_demoted_tclet_that_is_not_ended_does_not_box_its_site(tmp_path: Path) -> None:
    """Computing for a while is not an offence: the spinner is demoted for its life, and its
    site's next tclet starts as usual."""
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[bool, bool, set[int]]:
        async with Host(audit=audit) as host:
            hog = host.launch("while 1 {incr i}", origin=f"{HOG_SITE}/", **quiet())
            await until(lambda: hog.demoted)
            await hog.end("test over")
            await hog.wait()
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **quiet())
            classes = await _started(nxt)
            await nxt.wait()
            return hog.demoted, nxt.demoted, classes

    assert asyncio.run(scenario()) == (True, False, {os.SCHED_OTHER})
    assert audit_records(audit, "penalty") == []


def test_with_no_penalty_an_offending_site_starts_its_next_tclets_as_usual() -> None:
    async def scenario() -> tuple[str, bool, set[int]]:
        async with Host(penalty=0) as host:
            reason = await _hog_to_its_cpu_limit(host)
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **quiet())
            classes = await _started(nxt)
            await nxt.wait()
            return reason, nxt.demoted, classes

    assert asyncio.run(scenario()) == ("cpu limit 0.3 s", False, {os.SCHED_OTHER})


def test_a_boxed_site_is_refused_a_second_launch_within_the_interval(tmp_path: Path) -> None:
    """Refused: a clear error naming the site and the limit, audited, nothing launched; the
    site's next launch after the interval, and any other site's at once, go ahead."""
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[str, int, list[int]]:
        async with Host(audit=audit) as host:
            await _hog_to_its_cpu_limit(host)
            first = host.launch(POLITE, origin=f"{HOG_SITE}/a.tcl", **quiet())
            with pytest.raises(PenaltyHeld) as info:
                host.launch(POLITE, origin=f"{HOG_SITE}/b.tcl", **quiet())
            running = len(host.status())
            other = host.launch(POLITE, origin="http://127.0.0.1/", **quiet())
            await asyncio.sleep(info.value.wait)
            later = host.launch(POLITE, origin=f"{HOG_SITE}/c.tcl", **quiet())
            statuses = [(await t.wait()).status for t in (first, other, later)]
            return str(info.value), running, statuses

    message, running, statuses = asyncio.run(scenario())
    assert message.startswith(
        f"too many tclets from {HOG_SITE} while it is in the penalty box (limit 1 per 1 s;"
    )
    assert running == 1 and statuses == [0, 0, 0]
    refused = [r for r in audit_records(audit, "quota") if r["quota"] == "site_launches"]
    assert len(refused) == 1
    assert refused[0]["origin"] == f"{HOG_SITE}/b.tcl"
    assert (refused[0]["action"], refused[0]["request"], refused[0]["limit"]) == (
        "refused",
        "launch",
        1,
    )
    assert 0 <= float(refused[0]["value"]) < PENALTY_LAUNCH
    launched = [r["origin"] for r in audit_records(audit, "launch")]
    assert f"{HOG_SITE}/b.tcl" not in launched and f"{HOG_SITE}/c.tcl" in launched


def test_a_launch_that_fails_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot be started (the zygote refuses: injected, since a real fork
    failure cannot be had on demand) uses no slot of its boxed site's one launch a second and
    leaves no peer registered with the hub."""
    from tcletd.host.supervisor import Supervisor

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("zygote gone")

    async def scenario() -> tuple[int, int, int, bool]:
        async with Host() as host:
            await _hog_to_its_cpu_limit(host)
            real = Supervisor.launch
            monkeypatch.setattr(Supervisor, "launch", refuse)
            with pytest.raises(OSError, match="zygote gone"):
                host.launch(POLITE, origin=f"{HOG_SITE}/", **quiet())
            assert host._services is not None
            peers, running = len(host._services.hub._peers), len(host.status())
            monkeypatch.setattr(Supervisor, "launch", real)
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **quiet())  # at once: admitted
            return peers, running, (await nxt.wait()).status, nxt.demoted

    assert asyncio.run(scenario()) == (0, 0, 0, True)
