"""Liveness: what the host knows of each tclet (state from heartbeats), Host.status(), demotion.

Heartbeats come from the worker's Tcl event loop; a tclet that does not return to it (blocked in
``gets``, computing) stops beating and the host calls it ``busy`` without ending it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

import pytest
from support.audit import audit_records
from support.hosting import quiet, worker_pid
from support.net import TcpServer, echo_handler
from support.system import sched_classes
from support.waiting import until

from tcletd.api import Host
from tcletd.shared.states import BUSY_AFTER

pytestmark = pytest.mark.timeout(60)


def test_blocked_tclet_is_busy_idle_tclet_is_idle(silent: TcpServer, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> dict[str, str]:
        async with Host(audit=audit) as host:
            blocked = host.launch(
                f"set s [socket 127.0.0.1 {silent.port}]\ngets $s\n", policy="trusted", **quiet()
            )
            idle = host.launch("after 20000 {exit 0}", policy="home", **quiet())
            await until(lambda: idle.state.value == "idle")
            idle_since = time.monotonic()

            def states() -> dict[object, str]:
                return {t["id"]: str(t["state"]) for t in host.status()}

            # The blocked one stops beating and is called busy; the idle one goes on beating,
            # so it is still idle after longer than BUSY_AFTER.
            await until(
                lambda: (
                    states()[blocked.id] == "busy"
                    and time.monotonic() - idle_since > BUSY_AFTER + 0.5
                ),
                timeout=BUSY_AFTER + 10,
                message=lambda: f"states: {states()}",
            )
            now = states()
            result = {"blocked": now[blocked.id], "idle": now[idle.id]}
            await asyncio.gather(blocked.end("test over"), idle.end("test over"))
            return result

    assert asyncio.run(scenario()) == {"blocked": "busy", "idle": "idle"}
    changes = [(r["previous"], r["state"]) for r in audit_records(audit, "state")]
    assert ("starting", "script") in changes
    assert ("script", "busy") in changes
    assert ("script", "idle") in changes
    assert changes.count(("ending", "ended")) == 2


def test_host_status_fields() -> None:
    async def scenario() -> tuple[dict[str, object], str, float, float]:
        with TcpServer(echo_handler) as echo:
            async with Host() as host:
                ready = asyncio.Event()
                launched = time.monotonic()
                tclet = host.launch(
                    f"set s [socket 127.0.0.1 {echo.port}]\n"
                    "puts $s [string repeat x 9999]; flush $s; gets $s\n"
                    # Some CPU (more than /proc's 10 ms ticks), in slices with sleeps: no hog.
                    "for {set k 0} {$k < 10} {incr k} {\n"
                    "    set n 0; while {$n < 20000} {incr n}; after 10\n"
                    "}\n"
                    "puts ready; flush stdout; after 20000 {exit 0}\n",
                    policy="trusted",
                    on_stdout=lambda _b: ready.set(),
                    on_stderr=lambda _b: None,
                )
                returned = time.monotonic()
                await asyncio.wait_for(ready.wait(), 15)
                await until(lambda: tclet.state.value == "idle")  # a beat after the script
                asked = time.monotonic()
                (entry,) = host.status()
                answered = time.monotonic()
                await tclet.end("test over")
                # The tclet's age is at least from launch() returning to the question, at most
                # from before launch() to the answer.
                return entry, tclet.id, asked - returned, answered - launched

    entry, tclet_id, age_at_least, age_at_most = asyncio.run(scenario())
    assert set(entry) == {
        "id",
        "pid",
        "policy",
        "state",
        "sockets",
        "bytes_sent",
        "bytes_received",
        "cpu",
        "rss",
        "age",
        "demoted",
        "output",
    }
    assert entry["id"] == tclet_id
    assert isinstance(entry["pid"], int) and entry["pid"] != os.getpid()
    assert entry["policy"] == "trusted"
    assert entry["state"] == "idle"
    assert entry["sockets"] == 1
    sent, received, cpu, rss, age = (
        entry[k] for k in ("bytes_sent", "bytes_received", "cpu", "rss", "age")
    )
    assert isinstance(sent, int) and 10000 <= sent <= 10002
    assert isinstance(received, int) and 10000 <= received <= 10002
    assert isinstance(rss, int) and 10 * 2**20 < rss < 256 * 2**20
    assert isinstance(age, float) and age_at_least - 0.001 <= age <= age_at_most + 0.001
    # Seconds of CPU: some, and no more than its cores could give it in its age.
    assert isinstance(cpu, float) and 0 < cpu <= age * len(os.sched_getaffinity(0))
    assert entry["demoted"] is False
    assert entry["output"] == len("ready\n")


def test_a_cpu_hog_is_demoted_and_an_io_bound_tclet_is_not() -> None:
    async def scenario() -> tuple[bool, set[int], int, bool, set[int]]:
        with TcpServer(echo_handler) as echo:
            async with Host() as host:
                hog = host.launch("while 1 {incr i}", policy="trusted", **quiet())
                chatty = host.launch(
                    f"set s [socket 127.0.0.1 {echo.port}]\n"
                    "set end [expr {[clock milliseconds] + 1500}]\n"
                    "while {[clock milliseconds] < $end} {puts $s x; flush $s; gets $s}\n",
                    policy="trusted",
                    **quiet(),
                )
                await until(lambda: hog.demoted, timeout=5)
                assert hog.worker is not None and chatty.worker is not None
                # Every thread: libzmq's and Tcl's beside the main one.
                threads = len(os.listdir(f"/proc/{worker_pid(hog)}/task"))
                hog_classes = sched_classes(worker_pid(hog))
                chatty_classes = sched_classes(worker_pid(chatty))
                await chatty.wait()
                await hog.end("test over")
                await hog.wait()
                return hog.demoted, hog_classes, threads, chatty.demoted, chatty_classes

    hog_demoted, hog_classes, threads, chatty_demoted, chatty_classes = asyncio.run(scenario())
    assert (hog_demoted, hog_classes) == (True, {os.SCHED_IDLE})
    assert threads > 1
    assert (chatty_demoted, chatty_classes) == (False, {os.SCHED_OTHER})


def test_spinners_crowding_the_cores_are_each_demoted_though_each_gets_little() -> None:
    """Eight spinners a core: each gets ~0.12 of one, under the share a lone hog shows, yet each
    is awake (running or waiting to run) all the time without sleeping, and is demoted."""
    count = 8 * (os.cpu_count() or 1)

    async def scenario() -> tuple[float, int, int]:
        async with Host(max_workers=count + 4) as host:
            spinners = [
                host.launch("puts go; flush stdout; while 1 {incr i}", policy="trusted", **quiet())
                for _ in range(count)
            ]
            await until(lambda: all(t.worker is not None for t in spinners), timeout=30)
            began = time.monotonic()
            await until(lambda: all(t.demoted for t in spinners), timeout=3)
            took = time.monotonic() - began
            idle = sum(sched_classes(worker_pid(t)) == {os.SCHED_IDLE} for t in spinners)
            # Off the lowest CPU, every thread: one CPU is never busy with demoted work.
            cpus = os.sched_getaffinity(0)
            kept = cpus - {min(cpus)} if len(cpus) > 1 else cpus
            placed = sum(
                _affinities(worker_pid(t)) == [kept] * _threads(worker_pid(t)) for t in spinners
            )
            for tclet in spinners:
                await tclet.end("test over")
            return took, idle, placed

    took, idle, placed = asyncio.run(scenario())
    print(f"{count} spinners demoted within {took:.2f} s")
    assert idle == count
    assert placed == count


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


def test_an_output_flood_is_demoted_and_read_at_a_bounded_pace(tmp_path: Path) -> None:
    from tcletd.host.output import PACED_READ
    from tcletd.host.watchdog import HOG_OUTPUT

    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[list[float], set[int], int, bool, set[int], int]:
        flood_at: list[float] = []  # when each stdout chunk reached the sink
        flooded = 0
        printed: list[bytes] = []

        def flood_sink(data: bytes) -> None:
            nonlocal flooded
            flood_at.append(time.monotonic())
            flooded += len(data)

        async with Host(audit=audit) as host:
            flood = host.launch(
                "set line [string repeat x 1000]\nwhile 1 {puts $line}\n",
                policy="trusted",
                limits=["output_bytes=1GiB"],
                on_stdout=flood_sink,
                on_stderr=lambda _b: None,
            )
            # Well-behaved output beside it, for longer than the flood is watched: 20 lines of
            # 100 bytes a second, each flushed, for 3 s.
            neighbour = host.launch(
                "for {set i 0} {$i < 60} {incr i} {puts [string repeat q 99]; after 50}\n",
                policy="trusted",
                on_stdout=printed.append,
                on_stderr=lambda _b: None,
            )
            await until(lambda: flood.demoted, timeout=10)
            assert flood.worker is not None and neighbour.worker is not None
            flood_cls = sched_classes(worker_pid(flood))
            quiet_cls = sched_classes(worker_pid(neighbour))
            demoted_at = len(flood_at)
            await asyncio.sleep(1.0)
            paced = flood_at[demoted_at:]
            await neighbour.wait()
            await flood.end("test over")
            await flood.wait()
            gaps = [b - a for a, b in itertools.pairwise(paced)]
            return gaps, flood_cls, flooded, neighbour.demoted, quiet_cls, len(b"".join(printed))

    gaps, flood_cls, flooded, quiet_demoted, quiet_cls, quiet_bytes = asyncio.run(scenario())
    assert flood_cls == {os.SCHED_IDLE}
    assert flooded >= HOG_OUTPUT
    # Paced: a second of flood after the demotion came in chunks at least PACED_READ apart.
    assert len(gaps) >= 10, gaps
    assert min(gaps) >= PACED_READ * 0.9, min(gaps)
    assert (quiet_demoted, quiet_cls, quiet_bytes) == (False, {os.SCHED_OTHER}, 60 * 100)
    demoted = audit_records(audit, "demoted")
    assert len(demoted) == 1, demoted
    assert demoted[0]["output_bytes"] >= HOG_OUTPUT and demoted[0]["sched"] == "idle"


def test_a_spinner_is_demoted_by_its_first_look_before_any_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The look HOG_WINDOW into the script, not the periodic tick, demotes a spinner: with the
    watchdog's ticks stopped, it still is; a tclet that sleeps from its start is not."""
    from tcletd.host.watchdog import Watchdog

    monkeypatch.setattr(Watchdog, "start", lambda self, loop: None)

    async def scenario() -> tuple[bool, set[int], bool]:
        async with Host() as host:
            hog = host.launch("while 1 {incr i}", policy="trusted", **quiet())
            sleeper = host.launch("after 3000", policy="trusted", **quiet())
            await until(lambda: hog.demoted, timeout=10)
            assert hog.worker is not None
            classes = sched_classes(worker_pid(hog))
            await hog.end("test over")
            await hog.wait()
            await sleeper.wait()
            return hog.demoted, classes, sleeper.demoted

    assert asyncio.run(scenario()) == (True, {os.SCHED_IDLE}, False)


def test_an_after_0_storm_is_demoted_though_it_sleeps_briefly() -> None:
    """Tcl's notifier makes a storm of ``after 0`` events sleep over a hundred times a second at
    a full core, each time for next to nothing: it was awake all along, so it is a hog."""
    storm_script = (
        "proc tick {} {after 0 tick}\n"
        "for {set i 0} {$i < 1000} {incr i} {after 0 tick}\n"
        "vwait forever\n"
    )

    async def scenario() -> tuple[bool, set[int]]:
        async with Host() as host:
            storm = host.launch(storm_script, policy="trusted", **quiet())
            await until(lambda: storm.demoted, timeout=5)
            assert storm.worker is not None
            classes = sched_classes(worker_pid(storm))
            await storm.end("test over")
            await storm.wait()
            return storm.demoted, classes

    assert asyncio.run(scenario()) == (True, {os.SCHED_IDLE})


def test_a_flood_alone_on_its_host_is_demoted_but_not_paced() -> None:
    """Pacing protects neighbours; with none, a demoted tclet's output goes at full speed."""
    from tcletd.host.output import PACED_READ

    async def scenario() -> tuple[bool, int]:
        chunks: list[float] = []
        async with Host() as host:
            flood = host.launch(
                "set line [string repeat x 1000]\nwhile 1 {puts $line}\n",
                policy="trusted",
                limits=["output_bytes=1GiB"],
                on_stdout=lambda _b: chunks.append(time.monotonic()),
                on_stderr=lambda _b: None,
            )
            await until(lambda: flood.demoted, timeout=10)
            since = len(chunks)
            await asyncio.sleep(0.5)
            after = len(chunks) - since
            await flood.end("test over")
            await flood.wait()
            return flood.demoted, after

    demoted, chunks_in_half_a_second = asyncio.run(scenario())
    assert demoted
    # Paced, half a second holds at most 0.5 / PACED_READ chunks (50); unpaced, thousands.
    assert chunks_in_half_a_second > 4 * 0.5 / PACED_READ, chunks_in_half_a_second
