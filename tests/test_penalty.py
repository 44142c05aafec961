"""The penalty box: a site one of whose tclets hogged starts its next tclets demoted, and at
most one a second, for a while.

A hostile script relaunched in a loop is demoted ~0.1 s into each life; from the box, its next
lives start in the idle class, before any of their threads exist, and its relaunches are
throttled like a supervisor's crash loop. Other sites are untouched.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tcletd.api import Host
from tcletd.host.tclet import Tclet
from tcletd.host.watchdog import PENALTY, PENALTY_LAUNCH, PenaltyBox, PenaltyHeld
from tcletd.policy.addresses import Origin
from tcletd.shared.states import TcletState
from tests.conftest import (
    audit_records,
    run_tcletd,
    sched_classes,
    tcletd_process,
    until,
    wait_serving,
)

pytestmark = pytest.mark.timeout(60)

HOG_SITE = "http://127.0.0.1:8080"
POLITE = "after 300\nputs done\n"  # sleeps, prints, exits 0


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


def test_a_boxed_site_launches_at_most_once_per_interval() -> None:
    box = PenaltyBox(seconds=10.0)
    for t in (0.0, 0.1, 0.2):
        box.admit_launch("a", t)  # not boxed: never refused, nothing counted
    box.offend("a", 1.0)
    box.admit_launch("a", 1.0)
    with pytest.raises(PenaltyHeld) as info:
        box.admit_launch("a", 1.0 + PENALTY_LAUNCH / 4)
    assert info.value.site == "a"
    assert info.value.wait == pytest.approx(PENALTY_LAUNCH * 3 / 4)
    assert str(info.value) == (
        "too many tclets from a while it is in the penalty box (limit 1 per 1 s; next in 0.8 s)"
    )
    box.admit_launch("b", 1.1)  # another site: not boxed
    box.admit_launch("a", 1.0 + PENALTY_LAUNCH)  # the refusal counted nothing
    with pytest.raises(PenaltyHeld):
        box.admit_launch("a", 1.0 + PENALTY_LAUNCH * 1.5)
    box.admit_launch("a", 11.0)  # out of the box: no throttle
    box.admit_launch("a", 11.0)


def test_a_site_is_scheme_host_and_port() -> None:
    assert Origin.parse("http://Example.COM/a/b/page.tcl?x=1").site == "http://example.com:80"
    assert Origin.parse("https://127.0.0.1:8443/").site == "https://127.0.0.1:8443"
    assert Origin.parse("http://[::1]:81/x").site == "http://[::1]:81"
    assert Origin.parse("file:///home/u/t.tcl?x#y").site == "file:///home/u/t.tcl"
    assert Origin.parse("file:///home/u/other.tcl").site == "file:///home/u/other.tcl"
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


async def _hog_to_its_cpu_limit(host: Host) -> str:
    """An offence: a busy loop from HOG_SITE, ended by the host at a CPU limit of 0.3 s."""
    hog = host.launch(
        "while 1 {incr i}", origin=f"{HOG_SITE}/hog.tcl", limits=["cpu=0.3s"], **_quiet()
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
    assert 0 < float(at_launch[0]["origin_penalty"]) <= PENALTY  # type: ignore[arg-type]
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
            spender = host.launch(
                script, origin=f"{HOG_SITE}/spend.tcl", limits=[limit], **_quiet()
            )
            result = await spender.wait()
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **_quiet())
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
            hog = host.launch("while 1 {incr i}", origin=f"{HOG_SITE}/", **_quiet())
            await until(lambda: hog.demoted)
            await hog.end("test over")
            await hog.wait()
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **_quiet())
            classes = await _started(nxt)
            await nxt.wait()
            return hog.demoted, nxt.demoted, classes

    assert asyncio.run(scenario()) == (True, False, {os.SCHED_OTHER})
    assert audit_records(audit, "penalty") == []


def test_with_no_penalty_an_offending_site_starts_its_next_tclets_as_usual() -> None:
    async def scenario() -> tuple[str, bool, set[int]]:
        async with Host(penalty=0) as host:
            reason = await _hog_to_its_cpu_limit(host)
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **_quiet())
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
            first = host.launch(POLITE, origin=f"{HOG_SITE}/a.tcl", **_quiet())
            with pytest.raises(PenaltyHeld) as info:
                host.launch(POLITE, origin=f"{HOG_SITE}/b.tcl", **_quiet())
            running = len(host.status())
            other = host.launch(POLITE, origin="http://127.0.0.1/", **_quiet())
            await asyncio.sleep(info.value.wait)
            later = host.launch(POLITE, origin=f"{HOG_SITE}/c.tcl", **_quiet())
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
    assert 0 <= float(refused[0]["value"]) < PENALTY_LAUNCH  # type: ignore[arg-type]
    launched = [r["origin"] for r in audit_records(audit, "launch")]
    assert f"{HOG_SITE}/b.tcl" not in launched and f"{HOG_SITE}/c.tcl" in launched


def test_a_launch_that_fails_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot be started (the fork server refuses: injected, since a real fork
    failure cannot be had on demand) uses no slot of its boxed site's one launch a second and
    leaves no peer registered with the hub."""
    from tcletd.host.supervisor import Supervisor

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("fork server gone")

    async def scenario() -> tuple[int, int, int, bool]:
        async with Host() as host:
            await _hog_to_its_cpu_limit(host)
            real = Supervisor.launch
            monkeypatch.setattr(Supervisor, "launch", refuse)
            with pytest.raises(OSError, match="fork server gone"):
                host.launch(POLITE, origin=f"{HOG_SITE}/", **_quiet())
            assert host._services is not None
            peers, running = len(host._services.hub._peers), len(host.status())
            monkeypatch.setattr(Supervisor, "launch", real)
            nxt = host.launch(POLITE, origin=f"{HOG_SITE}/", **_quiet())  # at once: admitted
            return peers, running, (await nxt.wait()).status, nxt.demoted

    assert asyncio.run(scenario()) == (0, 0, 0, True)


def test_a_resident_host_client_from_a_boxed_site_gets_a_temporary_failure(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "control.sock"
    origin = f"{HOG_SITE}/t.tcl"
    with tcletd_process(["serve", "--socket", str(sock)]) as server:
        wait_serving(server)
        run = ["run", "--host", str(sock), "--origin", origin]
        hog = run_tcletd([*run, "--limit", "cpu=0.3s", "-"], stdin="while 1 {incr i}")
        assert hog.status == 137 and "cpu limit" in hog.stderr, hog
        boxed = run_tcletd([*run, "-"], stdin="puts once")
        again = run_tcletd([*run, "-"], stdin="puts never")
    assert (boxed.status, boxed.stdout) == (0, "once\n")
    assert again.status == 75 and again.stdout == "", again
    assert again.stderr.startswith(
        f"tcletd: too many tclets from {HOG_SITE} while it is in the penalty box"
    ), again


def test_serve_takes_the_penalty_as_a_strict_duration(tmp_path: Path) -> None:
    bad = run_tcletd(["serve", "--socket", str(tmp_path / "s"), "--penalty", "-5"])
    assert bad.status == 2
    assert "argument --penalty: expected a duration like 10s" in bad.stderr, bad
    sock = tmp_path / "control.sock"
    with tcletd_process(["serve", "--socket", str(sock), "--penalty", "0"]) as server:
        wait_serving(server)
        run = ["run", "--host", str(sock), "--origin", f"{HOG_SITE}/t.tcl"]
        hog = run_tcletd([*run, "--limit", "cpu=0.3s", "-"], stdin="while 1 {incr i}")
        ran = [run_tcletd([*run, "-"], stdin="puts ok") for _ in range(2)]
    assert hog.status == 137, hog
    assert [(r.status, r.stdout) for r in ran] == [(0, "ok\n"), (0, "ok\n")]


def _quiet() -> dict[str, object]:
    return {"on_stdout": lambda _b: None, "on_stderr": lambda _b: None}
